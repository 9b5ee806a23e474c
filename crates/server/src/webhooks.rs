//! Events and webhooks. Something that happens to an image or a clone (made, reset, expiring,
//! removed…) is an *event*: it goes to the audit log, and to each webhook registered for its
//! kind as a *delivery*, kept in the catalog until the endpoint accepts it.
//!
//! A delivery is a `POST` of a JSON body to the webhook's URL with the headers
//! `X-Thinclone-Event` (the kind), `X-Thinclone-Delivery` (its id, the same at every attempt)
//! and `X-Thinclone-Signature: sha256=<hex>`, the HMAC-SHA256 of the body under the webhook's
//! secret. A 2xx answer delivers it; anything else (another status, no answer within
//! [`TIMEOUT`]) is tried again after 1, 2, 4, … seconds (at most [`MAX_BACKOFF`]), up to
//! [`MAX_ATTEMPTS`] attempts, after which it is `failed`. A thread sends the due deliveries
//! every [`SEND_EVERY`]; they survive a restart of the server in the catalog.

use std::sync::Arc;
use std::time::Duration;

use api::{CreateWebhook, CreatedWebhook, Delivery, DeliveryState, Name, Role, Timestamp, Webhook, EVENT_KINDS};

use crate::auth::Caller;
use crate::catalog::{DeliveryRow, WebhookRow};
use crate::ops::{Result, Server, ServerError};

/// How often due deliveries are sent.
const SEND_EVERY: Duration = Duration::from_millis(250);
/// How long an endpoint has to answer one delivery.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: u32 = 8;
/// The longest pause between two attempts.
const MAX_BACKOFF: i64 = 3600;
/// The longest URL, description, and secret taken.
const MAX_URL: usize = 2048;
const MAX_TEXT: usize = 1000;

/// Something that happened to an image or a clone.
pub(crate) struct Event<'a> {
    /// One of [`EVENT_KINDS`].
    pub kind: &'static str,
    /// `clone`, `image` or `schedule`.
    pub subject: &'static str,
    pub name: &'a Name,
    pub team: Option<&'a Name>,
    pub detail: String,
}

/// HMAC-SHA256 of `body` under `secret`, in hexadecimal.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, body).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn view(row: WebhookRow) -> Webhook {
    Webhook {
        id: row.id,
        url: row.url,
        events: row.events,
        description: row.description,
        created_at: row.created_at,
        created_by: row.created_by,
    }
}

fn delivery_view(row: DeliveryRow) -> Delivery {
    let state = match row.state.as_str() {
        "delivered" => DeliveryState::Delivered,
        "failed" => DeliveryState::Failed,
        _ => DeliveryState::Pending,
    };
    Delivery {
        id: row.id,
        webhook: row.webhook,
        event: row.event,
        state,
        attempts: row.attempts,
        response_status: row.response_status,
        error: row.error,
        created_at: row.created_at,
        last_attempt_at: row.last_attempt_at,
        next_attempt_at: row.next_attempt_at.filter(|_| state == DeliveryState::Pending),
        body: serde_json::from_str(&row.body).unwrap_or(serde_json::Value::Null),
    }
}

/// A secret of 32 random bytes, in hexadecimal.
fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| ServerError::Internal(format!("reading /dev/urandom for a webhook's secret: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Server {
    pub fn webhooks(&self, caller: &Caller) -> Result<Vec<Webhook>> {
        caller.require(Role::Admin, "see webhooks")?;
        Ok(self.catalog().webhooks()?.into_iter().map(view).collect())
    }

    pub fn create_webhook(&self, caller: &Caller, request: CreateWebhook) -> Result<CreatedWebhook> {
        caller.require(Role::Admin, "register webhooks")?;
        let bad = |m: String| Err(ServerError::BadRequest(m));
        if request.url.len() > MAX_URL {
            return bad(format!("a webhook's URL is at most {MAX_URL} bytes"));
        }
        match url::Url::parse(&request.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
            Ok(_) => return bad(format!("{:?} is not an http:// or https:// URL", request.url)),
            Err(e) => {
                return bad(format!(
                    "{:?} is not a URL: {e}; give one like https://hooks.example/thinclone",
                    request.url
                ))
            }
        }
        if let Some(unknown) = request.events.iter().find(|e| !EVENT_KINDS.contains(&e.as_str())) {
            return bad(format!("unknown event kind {unknown:?}: the kinds are {}", EVENT_KINDS.join(", ")));
        }
        if request.description.as_ref().is_some_and(|d| d.chars().count() > MAX_TEXT) {
            return bad(format!("a description is at most {MAX_TEXT} characters"));
        }
        let secret = match request.secret {
            Some(s) if s.len() < 16 || s.len() > MAX_TEXT => {
                return bad(format!("a secret is 16 to {MAX_TEXT} bytes long; or let the server make one"))
            }
            Some(s) => s,
            None => random_secret()?,
        };
        let mut events = request.events;
        events.sort();
        events.dedup();
        let mut row = WebhookRow {
            id: 0,
            url: request.url,
            secret: secret.clone(),
            events,
            description: request.description,
            created_at: Timestamp::now(),
            created_by: caller.user.clone(),
        };
        row.id = self.catalog().insert_webhook(&row)?;
        Ok(CreatedWebhook { webhook: view(row), secret })
    }

    pub fn delete_webhook(&self, caller: &Caller, id: u64) -> Result<()> {
        caller.require(Role::Admin, "remove webhooks")?;
        Ok(self.catalog().delete_webhook(id)?)
    }

    /// A webhook's deliveries, newest first.
    pub fn deliveries(&self, caller: &Caller, id: u64) -> Result<Vec<Delivery>> {
        caller.require(Role::Admin, "see webhooks")?;
        let catalog = self.catalog();
        catalog.webhook(id)?;
        Ok(catalog.deliveries(id, 200)?.into_iter().map(delivery_view).collect())
    }

    /// Announces an event: in the audit log (no actor: the server saw it happen), and to
    /// every webhook registered for its kind.
    pub(crate) fn emit_event(&self, event: Event) {
        tracing::info!(event = event.kind, subject = event.subject, name = %event.name, "{}", event.detail);
        let target = format!("{} {}", event.subject, event.name);
        self.audit(None, event.kind, Some(target), event.team.cloned(), Err((200, event.detail.clone())));
        let now = Timestamp::now();
        let catalog = self.catalog();
        let hooks: Vec<u64> = match catalog.webhooks() {
            Ok(hooks) => hooks
                .into_iter()
                .filter(|h| h.events.is_empty() || h.events.iter().any(|e| e == event.kind))
                .map(|h| h.id)
                .collect(),
            Err(e) => {
                tracing::error!("reading the webhooks: {e}");
                return;
            }
        };
        if hooks.is_empty() {
            return;
        }
        let mut body = serde_json::Map::new();
        body.insert("event".into(), event.kind.into());
        body.insert("at".into(), serde_json::json!(now));
        body.insert(event.subject.into(), event.name.as_str().into());
        body.insert("team".into(), serde_json::json!(event.team));
        body.insert("detail".into(), event.detail.into());
        let body = serde_json::Value::Object(body).to_string();
        if let Err(e) = catalog.queue_deliveries(&hooks, event.kind, &body, now) {
            tracing::error!("queueing the deliveries of a {} event: {e}", event.kind);
        }
    }

    /// Starts the thread that sends due deliveries.
    pub(crate) fn follow_webhooks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        let spawned = std::thread::Builder::new().name("webhooks".into()).spawn(move || loop {
            std::thread::sleep(SEND_EVERY);
            let Some(server) = weak.upgrade() else { return };
            if server.is_stopping() {
                return;
            }
            server.send_due(&agent);
        });
        if let Err(e) = spawned {
            tracing::error!("starting the thread that delivers webhooks: {e}");
        }
    }

    fn send_due(&self, agent: &ureq::Agent) {
        let due = match self.catalog().due_deliveries(Timestamp::now(), 100) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("reading the due deliveries: {e}");
                return;
            }
        };
        for delivery in due {
            let hook = match self.catalog().webhook(delivery.webhook) {
                Ok(hook) => hook,
                Err(_) => continue,
            };
            let sent = agent
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("user-agent", concat!("thinclone/", env!("CARGO_PKG_VERSION")))
                .header("x-thinclone-event", &delivery.event)
                .header("x-thinclone-delivery", delivery.id.to_string())
                .header(
                    "x-thinclone-signature",
                    format!("sha256={}", signature(&hook.secret, delivery.body.as_bytes())),
                )
                .send(delivery.body.as_bytes());
            let (status, error) = match sent {
                Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
                Ok(response) => {
                    (Some(response.status().as_u16()), Some(format!("the endpoint answered {}", response.status())))
                }
                // The error names the URL's host at most, never a header.
                Err(e) => (None, Some(e.to_string())),
            };
            let now = Timestamp::now();
            let attempts = delivery.attempts + 1;
            let (state, next) = match &error {
                None => ("delivered", None),
                Some(_) if attempts >= MAX_ATTEMPTS => ("failed", None),
                Some(_) => ("pending", Some(Timestamp(now.0 + (1i64 << (attempts - 1).min(12)).min(MAX_BACKOFF)))),
            };
            match &error {
                None => tracing::debug!(delivery = delivery.id, webhook = hook.id, "delivered"),
                Some(e) => {
                    tracing::info!(delivery = delivery.id, webhook = hook.id, attempts, state, "delivery failed: {e}")
                }
            }
            if let Err(e) = self.catalog().record_attempt(delivery.id, state, status, error.as_deref(), now, next) {
                tracing::error!("recording a delivery attempt: {e}");
            }
        }
    }
}
