//! Webhooks: endpoints an administrator registers to be told of events (an image ready, a
//! clone expiring…), each delivery signed with the webhook's secret.

use crate::{Name, Timestamp};

/// The kinds of events, as deliveries name them in `event` and `X-Thinclone-Event`.
pub const EVENT_KINDS: [&str; 17] = [
    "image.ready",
    "image.failed",
    "image.retired",
    "schedule.run",
    "schedule.failed",
    "clone.created",
    "clone.reset",
    "clone.refreshed",
    "clone.reverted",
    "clone.removed",
    "clone.expiring",
    "clone.expired",
    "clone.stopped",
    "clone.unprotected",
    "clone.degraded",
    "checkpoint.made",
    "webhook.test",
];

/// A registered endpoint; its secret is shown only when it is made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: u64,
    pub url: String,
    /// The event kinds it gets; empty: every kind.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub created_by: Name,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: an `http://` or `https://` URL.
    pub url: String,
    /// The event kinds to deliver (see the list in doc/API.md); none or empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// The key deliveries are signed with (HMAC-SHA256 of the body), at least 16 characters;
    /// made by the server when not given, and answered once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The answer to `POST /v1/webhooks`: the webhook, and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    pub secret: String,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet accepted by the endpoint; tried again at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

/// One event sent (or being sent) to one webhook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: u64,
    pub webhook: u64,
    pub event: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The endpoint's status code at the last attempt.
    pub response_status: Option<u16>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub last_attempt_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    /// The body delivered (the same at every attempt).
    pub body: serde_json::Value,
}
