//! A small blocking HTTP client of the daemon's REST API (`doc/API.md`), used by the CLI.
//!
//! Every call returns the daemon's object as a typed struct that keeps any field this
//! client does not know about, so `--json` can print the whole object back. A 4xx or 5xx
//! answer becomes an error whose message is exactly the daemon's `error`; a daemon that
//! cannot be reached becomes an error that says how to start it.

use std::io;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long to wait for a TCP connection to the daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads, lists and polls: the daemon answers these from its state at once.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls that start, stop or copy a PostgreSQL server, or remove files: making a clone
/// takes about a second, but a busy machine or a large database can stretch that.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(150);

/// An image, as `GET /v1/images/{name}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// `creating`, `ready` or `failed`.
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub pg_version: Option<u32>,
    #[serde(default)]
    pub logical_bytes: Option<u64>,
    #[serde(default)]
    pub stored_bytes: Option<u64>,
    #[serde(default)]
    pub file_count: Option<u64>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Present while the image is being made.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// Fields this client does not know, kept so `--json` prints them too.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How far the making of an image has got. `total_bytes` is an estimate and may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A clone, as `GET /v1/clones/{name}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clone {
    pub name: String,
    pub image: String,
    /// `creating`, `ready`, `stopped` or `failed`.
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// A libpq connection URL with the clone's superuser and password.
    #[serde(default)]
    pub url: Option<String>,
    /// Disk the clone uses beyond its image.
    #[serde(default)]
    pub layer_bytes: Option<u64>,
    #[serde(default)]
    pub logical_bytes: Option<u64>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Fields this client does not know, kept so `--json` prints them too.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Where a new image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A PostgreSQL data directory on the daemon's machine (an absolute path).
    Dir(String),
    /// A connection URL of a running server to take a base backup from.
    Url(String),
}

/// What the clone actions `POST /v1/clones/{name}/{action}` can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneAction {
    Stop,
    Start,
    Reset,
}

impl CloneAction {
    fn path_segment(self) -> &'static str {
        match self {
            CloneAction::Stop => "stop",
            CloneAction::Start => "start",
            CloneAction::Reset => "reset",
        }
    }
}

/// A client of one daemon, at a base URL like `http://127.0.0.1:7420`.
pub struct Client {
    base_url: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base_url: &str) -> Client {
        let config = ureq::Agent::config_builder()
            // 4xx and 5xx answers carry the daemon's message in their body: read it.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(SHORT_TIMEOUT))
            .user_agent(concat!("thinclone/", env!("CARGO_PKG_VERSION")))
            .build();
        Client { base_url: base_url.trim_end_matches('/').to_owned(), agent: config.new_agent() }
    }

    /// `POST /v1/images`: starts making an image and answers at once with it (`creating`).
    pub fn create_image(&self, name: &str, source: &ImageSource) -> anyhow::Result<Image> {
        let body = match source {
            ImageSource::Dir(dir) => serde_json::json!({ "name": name, "from_dir": dir }),
            ImageSource::Url(url) => serde_json::json!({ "name": name, "from_url": url }),
        };
        // The daemon may check the source (open the directory, connect to the server)
        // before it answers.
        self.call("POST", "/v1/images", Some(&body), LONG_TIMEOUT)
    }

    pub fn images(&self) -> anyhow::Result<Vec<Image>> {
        self.call("GET", "/v1/images", None, SHORT_TIMEOUT)
    }

    pub fn image(&self, name: &str) -> anyhow::Result<Image> {
        self.call("GET", &format!("/v1/images/{}", encode_segment(name)), None, SHORT_TIMEOUT)
    }

    pub fn remove_image(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/images/{}", encode_segment(name));
        self.call::<Option<Value>>("DELETE", &path, None, LONG_TIMEOUT).map(drop)
    }

    /// `POST /v1/clones`: answers once the clone accepts SQL.
    pub fn create_clone(&self, name: &str, image: &str, driver: Option<&str>) -> anyhow::Result<Clone> {
        let mut body = serde_json::json!({ "name": name, "image": image });
        if let Some(driver) = driver {
            body["driver"] = driver.into();
        }
        self.call("POST", "/v1/clones", Some(&body), LONG_TIMEOUT)
    }

    pub fn clones(&self) -> anyhow::Result<Vec<Clone>> {
        self.call("GET", "/v1/clones", None, SHORT_TIMEOUT)
    }

    pub fn clone_named(&self, name: &str) -> anyhow::Result<Clone> {
        self.call("GET", &format!("/v1/clones/{}", encode_segment(name)), None, SHORT_TIMEOUT)
    }

    /// Stops, starts or resets a clone and answers with it afterwards.
    pub fn clone_action(&self, name: &str, action: CloneAction) -> anyhow::Result<Clone> {
        let path = format!("/v1/clones/{}/{}", encode_segment(name), action.path_segment());
        self.call("POST", &path, Some(&Value::Object(Map::new())), LONG_TIMEOUT)
    }

    pub fn remove_clone(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/clones/{}", encode_segment(name));
        self.call::<Option<Value>>("DELETE", &path, None, LONG_TIMEOUT).map(drop)
    }

    /// Makes one call and decodes its JSON answer; an empty body decodes as JSON `null`.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base_url, path);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).config().timeout_global(Some(timeout)).build().call(),
            ("DELETE", _) => self.agent.delete(&url).config().timeout_global(Some(timeout)).build().call(),
            ("POST", Some(body)) => {
                self.agent.post(&url).config().timeout_global(Some(timeout)).build().send_json(body)
            }
            ("POST", None) => self.agent.post(&url).config().timeout_global(Some(timeout)).build().send_empty(),
            _ => unreachable!("the client makes no {method} calls"),
        };
        let mut response = result.map_err(|e| self.transport_error(method, path, timeout, e))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| self.transport_error(method, path, timeout, e))?;
        if status >= 400 {
            return Err(status_error(status, &text));
        }
        let text = if text.trim().is_empty() { "null" } else { text.as_str() };
        serde_json::from_str(text).with_context(|| {
            format!("the thinclone daemon at {} sent an unexpected answer to {method} {path}", self.base_url)
        })
    }

    /// Describes a failure to talk to the daemon at all.
    fn transport_error(&self, method: &str, path: &str, timeout: Duration, e: ureq::Error) -> anyhow::Error {
        let base = &self.base_url;
        let unreachable =
            |why: &str| anyhow!("cannot reach the thinclone daemon at {base}: {why}; start it with `thinclone serve`");
        match e {
            ureq::Error::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => unreachable("connection refused"),
                io::ErrorKind::AddrNotAvailable => unreachable("address not available"),
                io::ErrorKind::NetworkUnreachable => unreachable("network unreachable"),
                io::ErrorKind::HostUnreachable => unreachable("host unreachable"),
                io::ErrorKind::NotFound => unreachable("not found"),
                _ => anyhow!("{method} {path} to the thinclone daemon at {base} failed: {e}"),
            },
            ureq::Error::HostNotFound => unreachable("host not found"),
            ureq::Error::ConnectionFailed => unreachable("connection failed"),
            ureq::Error::Timeout(ureq::Timeout::Connect) => {
                unreachable(&format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))
            }
            ureq::Error::Timeout(_) => {
                anyhow!("the thinclone daemon at {base} did not answer {method} {path} within {} s", timeout.as_secs())
            }
            ureq::Error::BadUri(why) => {
                anyhow!("invalid daemon URL {base:?}: {why}; give one like http://127.0.0.1:7420 with --url or THINCLONE_URL")
            }
            e => anyhow!("{method} {path} to the thinclone daemon at {base} failed: {e}"),
        }
    }
}

/// The error for a 4xx or 5xx answer: the daemon's own message when the body is
/// `{"error": "..."}`, else whatever the body says.
fn status_error(status: u16, body: &str) -> anyhow::Error {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => anyhow!(error),
        Err(_) if body.trim().is_empty() => anyhow!("the thinclone daemon answered HTTP {status}"),
        Err(_) => anyhow!("the thinclone daemon answered HTTP {status}: {}", body.trim()),
    }
}

/// Percent-encodes a name for use as one URL path segment, so a bad name reaches the
/// daemon whole and is refused there with a message, instead of naming another path.
fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Answers one HTTP request with `status` and `body`, and returns the request line.
    fn serve_once(status: &str, body: &'static str) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let status = status.to_owned();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut content_length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        content_length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut request_body = vec![0; content_length];
            reader.read_exact(&mut request_body).unwrap();
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            format!("{}{}", request_line.trim_end(), String::from_utf8(request_body).unwrap())
        });
        (base, handle)
    }

    #[test]
    fn a_refused_connection_says_how_to_start_the_daemon() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = Client::new(&format!("http://127.0.0.1:{port}/"));
        let err = client.images().unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "cannot reach the thinclone daemon at http://127.0.0.1:{port}: connection refused; \
                 start it with `thinclone serve`"
            )
        );
    }

    #[test]
    fn an_error_answer_becomes_exactly_the_daemons_message() {
        let (base, server) = serve_once("404 Not Found", r#"{"error": "no image named prod"}"#);
        let err = Client::new(&base).image("prod").unwrap_err();
        assert_eq!(format!("{err:#}"), "no image named prod");
        assert_eq!(server.join().unwrap(), "GET /v1/images/prod HTTP/1.1");
    }

    #[test]
    fn an_error_answer_without_a_json_body_says_the_status() {
        let (base, server) = serve_once("502 Bad Gateway", "upstream down\n");
        let err = Client::new(&base).clones().unwrap_err();
        assert_eq!(format!("{err:#}"), "the thinclone daemon answered HTTP 502: upstream down");
        server.join().unwrap();
    }

    #[test]
    fn a_clone_answer_is_decoded_and_keeps_unknown_fields() {
        let (base, server) = serve_once(
            "201 Created",
            r#"{"name": "alice", "image": "prod", "status": "ready", "message": null, "driver": "cowfs",
                "port": 7501, "url": "postgresql://postgres:x@127.0.0.1:7501/postgres", "layer_bytes": 245760,
                "logical_bytes": 629145600, "created_at": "2026-11-21T23:01:00Z", "pid": 42}"#,
        );
        let clone = Client::new(&base).create_clone("alice", "prod", Some("copy")).unwrap();
        assert_eq!(clone.port, Some(7501));
        assert_eq!(clone.layer_bytes, Some(245760));
        assert_eq!(clone.extra.get("pid"), Some(&Value::from(42)));
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /v1/clones HTTP/1.1"), "{request}");
        let sent: Value = serde_json::from_str(request.trim_start_matches("POST /v1/clones HTTP/1.1")).unwrap();
        assert_eq!(sent, serde_json::json!({"name": "alice", "image": "prod", "driver": "copy"}));
        let printed = serde_json::to_value(&clone).unwrap();
        assert_eq!(printed["pid"], 42);
        assert_eq!(printed["url"], "postgresql://postgres:x@127.0.0.1:7501/postgres");
    }

    #[test]
    fn a_no_content_answer_is_success() {
        let (base, server) = serve_once("204 No Content", "");
        Client::new(&base).remove_clone("alice").unwrap();
        assert_eq!(server.join().unwrap(), "DELETE /v1/clones/alice HTTP/1.1");
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(encode_segment("prod-15_a"), "prod-15_a");
        assert_eq!(encode_segment("../etc/x y"), "%2E%2E%2Fetc%2Fx%20y");
    }
}
