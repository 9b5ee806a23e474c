//! `thinclone webhook list|add|rm|deliveries`: endpoints told of events (administrators).

use api::CreateWebhook;

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum WebhookCommand {
    /// List the webhooks.
    List,
    /// Register an endpoint: events are POSTed to it as JSON, signed with
    /// `X-Thinclone-Signature: sha256=HMAC-SHA256(secret, body)`, and retried with backoff
    /// until it answers 2xx. Prints the secret once.
    Add {
        /// Where deliveries are POSTed (http:// or https://).
        #[arg(value_name = "URL")]
        endpoint: String,
        /// An event kind to deliver (repeatable): image.ready, image.failed, image.retired,
        /// schedule.run, schedule.failed, clone.created, clone.reset, clone.refreshed,
        /// clone.reverted, clone.removed, clone.expiring, clone.expired, clone.stopped,
        /// clone.unprotected, clone.degraded, checkpoint.made (doc/API.md). Every kind when
        /// not given.
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
        /// The signing secret (at least 16 bytes); the server makes one when not given.
        #[arg(long, env = "THINCLONE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove a webhook and its delivery history.
    Rm {
        /// The webhook's id (`webhook list`).
        id: u64,
    },
    /// A webhook's latest deliveries: each event, its state, attempts and the last answer.
    Deliveries {
        /// The webhook's id.
        id: u64,
    },
}

pub fn run(cmd: WebhookCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        WebhookCommand::List => {
            let hooks = ctx.client.list_webhooks()?;
            ctx.show_list(&hooks, format::webhooks_table)
        }
        WebhookCommand::Add { endpoint, events, secret, description } => {
            let made = ctx.client.create_webhook(&CreateWebhook { url: endpoint, events, secret, description })?;
            ctx.show(&made, format::created_webhook_fields)
        }
        WebhookCommand::Rm { id } => Ok(ctx.client.delete_webhook(id)?),
        WebhookCommand::Deliveries { id } => {
            let deliveries = ctx.client.list_deliveries(id)?;
            ctx.show_list(&deliveries, format::deliveries_table)
        }
    }
}
