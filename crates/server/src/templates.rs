//! Clone templates: named lists of scripts that run on a new clone before it is handed out.

use api::{CreateTemplate, Name, Role, Template, Timestamp};

use crate::auth::Caller;
use crate::catalog::{CatalogError, TemplateRow};
use crate::ops::{Result, Server, ServerError};

/// The most scripts a template holds, and bytes of SQL in one.
const MAX_SCRIPTS: usize = 32;
const MAX_SCRIPT_BYTES: usize = 48 << 10;

fn view(row: TemplateRow) -> Template {
    Template {
        name: row.name,
        scripts: serde_json::from_str(&row.scripts).unwrap_or_default(),
        description: row.description,
        created_by: row.created_by,
        created_at: row.created_at,
    }
}

fn no_template(name: &Name) -> ServerError {
    ServerError::NotFound(format!("no template named {name}; `thinclone template list` shows them"))
}

impl Server {
    /// Every template: whoever may make clones may use any of them.
    pub fn templates(&self, _caller: &Caller) -> Result<Vec<Template>> {
        Ok(self.catalog().templates()?.into_iter().map(view).collect())
    }

    pub fn template(&self, _caller: &Caller, name: &Name) -> Result<Template> {
        match self.catalog().template(name) {
            Ok(row) => Ok(view(row)),
            Err(CatalogError::NotFound { .. }) => Err(no_template(name)),
            Err(e) => Err(e.into()),
        }
    }

    pub fn create_template(&self, caller: &Caller, request: CreateTemplate) -> Result<Template> {
        caller.require(Role::ImageCreator, "make templates")?;
        if request.scripts.is_empty() || request.scripts.len() > MAX_SCRIPTS {
            return Err(ServerError::BadRequest(format!("a template has 1 to {MAX_SCRIPTS} scripts")));
        }
        for script in &request.scripts {
            if script.name.is_empty() || script.name.len() > 255 || script.sql.len() > MAX_SCRIPT_BYTES {
                return Err(ServerError::BadRequest(format!(
                    "script {:?}: a name of 1 to 255 bytes and at most {} KiB of SQL",
                    script.name,
                    MAX_SCRIPT_BYTES >> 10
                )));
            }
        }
        if request.description.as_ref().is_some_and(|d| d.chars().count() > 1000) {
            return Err(ServerError::BadRequest("a description is at most 1000 characters".into()));
        }
        let row = TemplateRow {
            name: request.name,
            scripts: serde_json::to_string(&request.scripts)
                .map_err(|e| ServerError::Internal(format!("encoding the scripts: {e}")))?,
            description: request.description,
            created_by: caller.user.clone(),
            created_at: Timestamp::now(),
        };
        match self.catalog().insert_template(&row) {
            Ok(()) => Ok(view(row)),
            Err(CatalogError::Exists { .. }) => {
                Err(ServerError::Conflict(format!("template {} already exists", row.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn delete_template(&self, caller: &Caller, name: &Name) -> Result<()> {
        caller.require(Role::ImageCreator, "remove templates")?;
        match self.catalog().delete_template(name) {
            Ok(()) => Ok(()),
            Err(CatalogError::NotFound { .. }) => Err(no_template(name)),
            Err(e) => Err(e.into()),
        }
    }

    /// A template's scripts, for a clone about to be made.
    pub(crate) fn template_scripts(&self, name: &Name) -> Result<Vec<api::ImageScript>> {
        match self.catalog().template(name) {
            Ok(row) => Ok(view(row).scripts),
            Err(CatalogError::NotFound { .. }) => Err(no_template(name)),
            Err(e) => Err(e.into()),
        }
    }
}
