//! `thinclone template list|show|create|rm`: clone templates, scripts run on a new clone
//! before it is handed out (`clone create --template NAME`).

use std::path::PathBuf;

use anyhow::Context;
use api::{CreateTemplate, ImageScript, Name};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum TemplateCommand {
    /// List the templates.
    List,
    /// Show a template and its scripts.
    Show {
        /// The template's name.
        name: Name,
    },
    /// Make a template (image creators and administrators): SQL files run, in order, as
    /// the clone's superuser on each clone made with it, before the clone is handed out,
    /// with `current_setting('thinclone.clone')`, `…owner` and `…image` naming the clone,
    /// its owner and its image. A script that fails fails the clone's creation.
    Create {
        /// The template's name.
        name: Name,
        /// An SQL file (repeatable).
        #[arg(long = "script", value_name = "FILE.sql", required = true)]
        scripts: Vec<PathBuf>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove a template; clones made with it are not changed.
    Rm {
        /// The template's name.
        name: Name,
    },
}

pub fn run(cmd: TemplateCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::List => {
            let templates = ctx.client.list_templates()?;
            ctx.show_list(&templates, format::templates_table)
        }
        TemplateCommand::Show { name } => {
            let template = ctx.client.get_template(&name)?;
            ctx.show(&template, format::template_fields)
        }
        TemplateCommand::Create { name, scripts, description } => {
            let scripts = scripts
                .iter()
                .map(|path| {
                    let sql = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let name =
                        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
                    Ok(ImageScript { name, sql, database: None })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let template = ctx.client.create_template(&CreateTemplate { name, scripts, description })?;
            ctx.show(&template, format::template_fields)
        }
        TemplateCommand::Rm { name } => Ok(ctx.client.delete_template(&name)?),
    }
}
