//! The client's one error type: what a caller must tell apart (the server said no, the server
//! is not there, it was too slow, its answer was unreadable, the operation failed).

use std::time::Duration;

use api::{ErrorBody, ErrorCode, Operation, OperationId};

/// Why a call of the client failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered 4xx or 5xx. The message is exactly the server's.
    #[error("{body}")]
    Api { status: u16, body: ErrorBody },
    /// No server answers at the base URL.
    #[error("cannot reach the thinclone server at {url}: {why}; start it with `thinclone serve`")]
    Unreachable { url: String, why: String },
    /// The server took too long to answer one request.
    #[error("the thinclone server at {url} did not answer {method} {path} within {}", span(*.timeout))]
    Timeout { url: String, method: &'static str, path: String, timeout: Duration },
    /// An operation did not end within the client's wait timeout. It may still end later.
    #[error("operation {id} did not end within {}; follow it with `thinclone op wait {id}`", span(*.timeout))]
    WaitTimeout { id: OperationId, timeout: Duration },
    /// The server's answer is not what the API says it is.
    #[error("the thinclone server at {url} sent an answer to {method} {path} that this client cannot read: {why}")]
    Decode { url: String, method: &'static str, path: String, why: String },
    /// The operation ended `failed`. The message is exactly the operation's error.
    #[error("{}", failure_text(.0))]
    OperationFailed(Box<Operation>),
    /// The base URL is not one the client can use.
    #[error("invalid server URL {url:?}: {why}; give one like http://127.0.0.1:7420")]
    BadUrl { url: String, why: String },
    /// The server's TLS certificate is not one the client trusts: it is signed by an
    /// unknown authority, made out to another name, expired…
    #[error("the server's certificate at {url} is not trusted: {why}; {}", untrusted_hint(.ca.as_deref()))]
    UntrustedCertificate {
        url: String,
        why: String,
        /// Where the trusted authorities came from (a CA file), when not the built-in ones.
        ca: Option<String>,
    },
    /// TLS with the server failed in another way (an `https://` URL at a plain-HTTP server).
    #[error("TLS with the thinclone server at {url} failed: {why}")]
    Tls { url: String, why: String },
    /// A certificate authority given to the client (a CA file) cannot be used.
    #[error("cannot use {origin} as the certificate authority to trust: {why}")]
    BadCa { origin: String, why: String },
    /// The connection broke in some other way.
    #[error("{method} {path} to the thinclone server at {url} failed: {why}")]
    Transport { url: String, method: &'static str, path: String, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The API's error code, when the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// Whether the server said there is no such object.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }

    /// The failed operation, for an [`Error::OperationFailed`].
    pub fn failed_operation(&self) -> Option<&Operation> {
        match self {
            Error::OperationFailed(op) => Some(op),
            _ => None,
        }
    }
}

fn untrusted_hint(ca: Option<&str>) -> String {
    match ca {
        None => {
            "pass --ca-file (or set THINCLONE_CA_FILE) with the certificate of the authority that signed it".to_owned()
        }
        Some(ca) => format!(
            "only the authority in {ca} is trusted for it: pass --ca-file with the certificate of the authority \
             that signed it"
        ),
    }
}

fn failure_text(op: &Operation) -> String {
    match &op.error {
        Some(error) => error.clone(),
        None => format!("operation {} ({} of {}) failed without saying why", op.id, op.kind, op.target.name),
    }
}

/// A duration for people: `250 ms`, `60 s`.
fn span(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}
