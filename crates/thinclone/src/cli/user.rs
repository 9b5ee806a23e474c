//! `thinclone user list|show|create|rm`: the users of the server and their roles
//! (administrators only, but anyone may show themselves).

use api::{CreateUser, Name, Role};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// List the users.
    List,
    /// Show one user: role and teams.
    Show {
        /// The user's name.
        name: Name,
    },
    /// Make a user. They log in with a token: `thinclone token create --user NAME`.
    Create {
        /// The user's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// What they may do: viewer (reads), clone_user (makes and uses their own clones),
        /// image_creator (also makes images), admin (everything).
        #[arg(long, value_parser = role_parser())]
        role: Role,
        /// A team to join (repeatable); it must exist.
        #[arg(long = "team", value_name = "TEAM")]
        teams: Vec<Name>,
    },
    /// Remove a user and their tokens.
    Rm {
        /// The user's name.
        name: Name,
    },
}

/// The roles' names, from the one list in the api crate.
pub fn role_parser() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new(Role::ALL.map(Role::as_str))
        .map(|s| s.parse::<Role>().expect("the possible values are the roles' names"))
}

pub fn run(cmd: UserCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        UserCommand::List => {
            let users = ctx.client.list_users()?;
            ctx.show_list(&users, format::users_table)
        }
        UserCommand::Show { name } => {
            let user = ctx.client.get_user(&name)?;
            ctx.show(&user, format::user_fields)
        }
        UserCommand::Create { name, role, teams } => {
            let user = ctx.client.create_user(&CreateUser { name, role, teams })?;
            ctx.show(&user, format::user_fields)
        }
        UserCommand::Rm { name } => Ok(ctx.client.delete_user(&name)?),
    }
}
