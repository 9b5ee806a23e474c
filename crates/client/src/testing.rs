//! Test support (feature `testing`): a tiny HTTP server that gives canned answers in order
//! and records what it was asked, and sample API objects, so that the client and its users
//! (the CLI) can be tested without a real thinclone server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::{
    Clone, CloneStatus, Driver, Image, ImageStatus, Name, Operation, OperationId, OperationKind, OperationState,
    Progress, Target, Timestamp,
};

/// How long a [`CannedServer`] waits for a request before it gives up on the rest.
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// One answer: an HTTP status and a body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Answer {
        Answer { status, body: serde_json::to_string(body).expect("test objects encode") }
    }

    /// An answer with any text as its body.
    pub fn text(status: u16, body: &str) -> Answer {
        Answer { status, body: body.to_owned() }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path as sent, percent escapes and all.
    pub path: String,
    pub content_type: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    pub body: String,
}

impl Request {
    /// `METHOD PATH`, e.g. `GET /v1/clones/alice`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A server on a free loopback port that gives its answers, one per request, in order; it
/// closes each connection after answering.
pub struct CannedServer {
    url: String,
    thread: JoinHandle<Vec<Request>>,
}

impl CannedServer {
    pub fn start(answers: Vec<Answer>) -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let thread = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let Some(stream) = accept(&listener) else { break };
                let Some(request) = answer_one(stream, &answer) else { break };
                requests.push(request);
            }
            requests
        });
        CannedServer { url, thread }
    }

    /// The base URL to give the client.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The requests it received, once it has given all its answers (or waited in vain for
    /// a request for a while).
    pub fn requests(self) -> Vec<Request> {
        self.thread.join().expect("the canned server does not panic")
    }

    /// The request lines (`METHOD PATH`) it received.
    pub fn request_lines(self) -> Vec<String> {
        self.requests().iter().map(Request::line).collect()
    }
}

fn accept(listener: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + IDLE_LIMIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                stream.set_read_timeout(Some(IDLE_LIMIT)).ok()?;
                return Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

fn answer_one(stream: TcpStream, answer: &Answer) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut content_length = 0;
    let mut content_type = None;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let reason = if answer.status < 400 { "OK" } else { "Error" };
    write!(
        stream,
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    )
    .ok()?;
    stream.flush().ok()?;
    Some(Request { method, path, content_type, authorization, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A name from a literal known to be valid.
pub fn name(name: &str) -> Name {
    Name::new(name).expect("a valid test name")
}

/// An operation on `target`: running, or ended in `state` (a failed one with `error`).
pub fn operation(id: u64, kind: OperationKind, target: &str, state: OperationState) -> Operation {
    Operation {
        id: OperationId(id),
        kind,
        target: Target { kind: kind.target_kind(), name: name(target) },
        state,
        message: None,
        progress: None,
        error: (state == OperationState::Failed).then(|| "it went wrong".to_owned()),
        created_at: Timestamp(1_795_300_000),
        finished_at: state.is_finished().then_some(Timestamp(1_795_300_002)),
    }
}

/// A ready image of 600 MiB.
pub fn image(name_: &str) -> Image {
    Image {
        name: name(name_),
        status: ImageStatus::Ready,
        message: None,
        engine: "db".to_owned(),
        engine_version: Some("15".to_owned()),
        source: "/srv/backups/prod".to_owned(),
        location: name("local"),
        agent: Some(name("local")),
        logical_bytes: 629_145_600,
        stored_bytes: 633_000_000,
        file_count: 1123,
        clone_count: 2,
        team: name("default"),
        created_by: Some(name("admin")),
        created_at: Timestamp(1_795_300_000),
        operation: None,
        progress: None,
        mask: Vec::new(),
        scripts: Vec::new(),
        report: None,
        schedule: None,
    }
}

/// An image being made, `done` of `total` bytes copied.
pub fn creating_image(name_: &str, done: u64, total: u64) -> Image {
    Image {
        status: ImageStatus::Creating,
        progress: Some(Progress { done_bytes: done, total_bytes: total }),
        operation: Some(OperationId(1)),
        ..image(name_)
    }
}

/// A ready cowfs clone of `image` on `port`.
pub fn clone(name_: &str, image: &str, port: u16) -> Clone {
    Clone {
        name: name(name_),
        image: name(image),
        status: CloneStatus::Ready,
        message: None,
        driver: Driver::Cowfs,
        engine: "db".to_owned(),
        engine_version: "15".to_owned(),
        agent: name("local"),
        host: "127.0.0.1".to_owned(),
        port,
        user: "admin".to_owned(),
        url: Some(format!("db://admin:pw@127.0.0.1:{port}/main")),
        owner: name("admin"),
        team: name("default"),
        stored_bytes: 245_760,
        logical_bytes: 629_145_600,
        sizes_at: Some(Timestamp(1_795_300_060)),
        created_at: Timestamp(1_795_300_060),
        operation: None,
        origin: None,
        read_only: false,
        expires_at: None,
        protected: false,
        protected_until: None,
        idle_since: None,
        idle: api::IdlePolicy::default(),
        template: None,
    }
}
