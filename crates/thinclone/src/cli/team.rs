//! `thinclone team list|show|create|rm|add|remove`: teams, which own images and clones;
//! a user sees what their teams have.

use api::{CreateTeam, Name};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum TeamCommand {
    /// List your teams (every team, for an administrator).
    List,
    /// Show one team and its members.
    Show {
        /// The team's name.
        name: Name,
    },
    /// Make a team (administrators).
    Create {
        /// The team's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
    },
    /// Remove a team that has no images or clones (administrators).
    Rm {
        /// The team's name.
        name: Name,
    },
    /// Add a user to a team (administrators).
    Add {
        /// The team's name.
        team: Name,
        /// The user's name.
        user: Name,
    },
    /// Take a user out of a team (administrators).
    Remove {
        /// The team's name.
        team: Name,
        /// The user's name.
        user: Name,
    },
}

pub fn run(cmd: TeamCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        TeamCommand::List => {
            let teams = ctx.client.list_teams()?;
            ctx.show_list(&teams, format::teams_table)
        }
        TeamCommand::Show { name } => {
            let team = ctx.client.get_team(&name)?;
            ctx.show(&team, format::team_fields)
        }
        TeamCommand::Create { name } => {
            let team = ctx.client.create_team(&CreateTeam { name })?;
            ctx.show(&team, format::team_fields)
        }
        TeamCommand::Rm { name } => Ok(ctx.client.delete_team(&name)?),
        TeamCommand::Add { team, user } => {
            let team = ctx.client.add_member(&team, &user)?;
            ctx.show(&team, format::team_fields)
        }
        TeamCommand::Remove { team, user } => {
            let team = ctx.client.remove_member(&team, &user)?;
            ctx.show(&team, format::team_fields)
        }
    }
}
