//! The agent channel, server side: agents dial the server (so that an agent host needs no
//! inbound port but its clones', and agents behind NAT work), authenticate with the
//! certificate the server's authority signed at enrollment (mutual TLS), and then take
//! requests and answer them on that one connection, one JSON [`Frame`] per line.
//!
//! The [`Hub`] keeps each agent's connection and matches replies to the calls that wait for
//! them. A call to an agent that is not connected, or whose connection drops before it
//! answers, fails at once as unavailable; an agent that says nothing for
//! [`SILENCE_LIMIT`] (it is sent a ping every [`PING_EVERY`]) is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::agent::{AgentError, AgentErrorKind, Frame, Reply, Request};
use api::Name;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How often each side is sent a ping when it has heard nothing.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// How long an agent may stay silent before it is dropped as unreachable.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(8);
/// The longest line a frame may be.
const MAX_FRAME: usize = 1 << 20;

/// What a call sees of a request under way.
#[derive(Debug)]
pub enum Event {
    Progress { done: u64, total: u64 },
    Step(String),
}

enum Delivery {
    Event(Event),
    Reply(Result<Reply, AgentError>),
}

struct Connection {
    /// Frames to send.
    tx: tokio::sync::mpsc::UnboundedSender<Frame>,
    /// Calls waiting for their reply, by request id.
    pending: Mutex<HashMap<u64, mpsc::Sender<Delivery>>>,
    last_heard: Mutex<Instant>,
    /// Tells the connection's tasks to end.
    close: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who a connecting agent is, from the fingerprint of the certificate it presented: its
/// name, or `None` for an unknown or revoked agent.
pub type Authenticate = Arc<dyn Fn(&str) -> Option<Name> + Send + Sync>;

/// What the hub tells the server: an agent connected (and said hello) or dropped.
#[derive(Debug, Clone)]
pub enum Change {
    Connected(Name),
    Dropped(Name),
}

pub struct Hub {
    connections: Mutex<HashMap<Name, Arc<Connection>>>,
    next_id: AtomicU64,
    changes: Mutex<Option<mpsc::Sender<Change>>>,
}

fn unavailable(agent: &Name, why: &str) -> AgentError {
    AgentError {
        kind: AgentErrorKind::Unavailable,
        message: format!("agent {agent} is unreachable ({why}); try again when it is back"),
    }
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub { connections: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), changes: Mutex::new(None) })
    }

    /// Where connections and drops are told.
    pub fn on_change(&self, tx: mpsc::Sender<Change>) {
        *lock(&self.changes) = Some(tx);
    }

    fn tell(&self, change: Change) {
        if let Some(tx) = lock(&self.changes).as_ref() {
            // A server that stopped listening is shutting down; nothing to tell it.
            let _ = tx.send(change);
        }
    }

    pub fn is_connected(&self, agent: &Name) -> bool {
        lock(&self.connections).contains_key(agent)
    }

    /// When the agent was last heard from, while it is connected.
    pub fn last_heard(&self, agent: &Name) -> Option<Instant> {
        lock(&self.connections).get(agent).map(|c| *lock(&c.last_heard))
    }

    /// Drops every connection, as the server stops: calls waiting for replies fail at once.
    pub fn close_all(&self) {
        let connections: Vec<Arc<Connection>> = lock(&self.connections).drain().map(|(_, c)| c).collect();
        for c in connections {
            lock(&c.pending).clear();
            // The connection's tasks may have ended already.
            let _ = c.close.send(true);
        }
    }

    /// Drops an agent's connection (it was revoked).
    pub fn drop_agent(&self, agent: &Name) {
        if let Some(c) = lock(&self.connections).remove(agent) {
            // The tasks may have ended already.
            let _ = c.close.send(true);
        }
    }

    /// Asks `agent` and waits for its reply (up to `timeout`, or for ever), passing progress
    /// to `on_event`. Blocking: call it from a worker thread.
    pub fn call(
        &self,
        agent: &Name,
        request: Request,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(Event),
    ) -> Result<Reply, AgentError> {
        let connection =
            lock(&self.connections).get(agent).cloned().ok_or_else(|| unavailable(agent, "not connected"))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&connection.pending).insert(id, tx);
        if connection.tx.send(Frame::Request { id, request }).is_err() {
            lock(&connection.pending).remove(&id);
            return Err(unavailable(agent, "its connection closed"));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let delivery = match deadline {
                Some(deadline) => {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).map_err(|e| match e {
                        mpsc::RecvTimeoutError::Timeout => "it did not answer in time",
                        mpsc::RecvTimeoutError::Disconnected => "its connection closed",
                    })
                }
                None => rx.recv().map_err(|_| "its connection closed"),
            };
            match delivery {
                Ok(Delivery::Event(event)) => on_event(event),
                Ok(Delivery::Reply(reply)) => return reply,
                Err(why) => {
                    lock(&connection.pending).remove(&id);
                    return Err(unavailable(agent, why));
                }
            }
        }
    }

    /// Accepts agents on `listener` until `shutdown` says so.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        authenticate: Authenticate,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accepting an agent's connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let hub = self.clone();
            let acceptor = acceptor.clone();
            let authenticate = authenticate.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => hub.run_connection(stream, authenticate).await,
                    Ok(Err(e)) => tracing::info!(%peer, "an agent's TLS handshake failed: {e}"),
                    Err(_) => tracing::info!(%peer, "an agent's TLS handshake did not finish in time"),
                }
            });
        }
    }

    async fn run_connection(
        self: Arc<Self>,
        stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        authenticate: Authenticate,
    ) {
        let Some(fingerprint) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| crate::pki::fingerprint(c.as_ref()))
        else {
            return;
        };
        let Some(agent) = authenticate(&fingerprint) else {
            tracing::warn!(fingerprint, "refused an agent whose certificate is unknown or revoked");
            return;
        };
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).lines();
        // The first line names the agent; it must be the one the certificate says.
        match tokio::time::timeout(SILENCE_LIMIT, lines.next_line()).await {
            Ok(Ok(Some(line))) => match serde_json::from_str::<Frame>(&line) {
                Ok(Frame::Hello { agent: said, version }) if said == agent => {
                    tracing::info!(%agent, version, "agent connected");
                }
                _ => {
                    tracing::warn!(%agent, "an agent did not start with a hello of its own name");
                    return;
                }
            },
            _ => return,
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
        let (close, mut closed) = tokio::sync::watch::channel(false);
        let connection = Arc::new(Connection {
            tx,
            pending: Mutex::new(HashMap::new()),
            last_heard: Mutex::new(Instant::now()),
            close,
        });
        if let Some(old) = lock(&self.connections).insert(agent.clone(), connection.clone()) {
            // A new connection of the same agent replaces the old one (it reconnected).
            let _ = old.close.send(true);
        }
        self.tell(Change::Connected(agent.clone()));
        // Writer: frames to the agent, and a ping whenever it has been quiet.
        let writer_conn = connection.clone();
        let mut writer_closed = closed.clone();
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(PING_EVERY);
            loop {
                let frame = tokio::select! {
                    frame = rx.recv() => match frame { Some(f) => f, None => break },
                    _ = ping.tick() => {
                        if writer_conn.last_heard.lock().map(|t| t.elapsed() > SILENCE_LIMIT).unwrap_or(true) {
                            tracing::warn!("an agent fell silent; dropping its connection");
                            break;
                        }
                        Frame::Ping
                    }
                    _ = writer_closed.changed() => break,
                };
                let mut line = match serde_json::to_vec(&frame) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("encoding a frame: {e}");
                        continue;
                    }
                };
                line.push(b'\n');
                if write.write_all(&line).await.is_err() || write.flush().await.is_err() {
                    break;
                }
            }
            // However the writer ends, the reader ends too.
            let _ = writer_conn.close.send(true);
        });
        // Reader: replies, progress and pongs from the agent.
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                _ = closed.changed() => break,
            };
            let line = match line {
                Ok(Some(line)) if line.len() <= MAX_FRAME => line,
                _ => break,
            };
            *lock(&connection.last_heard) = Instant::now();
            match serde_json::from_str::<Frame>(&line) {
                Ok(Frame::Reply { id, result }) => {
                    if let Some(tx) = lock(&connection.pending).remove(&id) {
                        // The caller may have given up (timed out); then nobody waits.
                        let _ = tx.send(Delivery::Reply(result));
                    }
                }
                Ok(Frame::Progress { id, done, total }) => {
                    if let Some(tx) = lock(&connection.pending).get(&id) {
                        let _ = tx.send(Delivery::Event(Event::Progress { done, total }));
                    }
                }
                Ok(Frame::Step { id, message }) => {
                    if let Some(tx) = lock(&connection.pending).get(&id) {
                        let _ = tx.send(Delivery::Event(Event::Step(message)));
                    }
                }
                Ok(Frame::Ping) => {
                    // Answered by the writer; a closed writer ends the connection anyway.
                    let _ = connection.tx.send(Frame::Pong);
                }
                Ok(Frame::Pong) => {}
                Ok(_) => tracing::warn!(%agent, "an agent sent an unexpected frame"),
                Err(e) => tracing::warn!(%agent, "an agent sent a frame that does not parse: {e}"),
            }
        }
        writer.abort();
        // Waiting calls learn at once that their agent is gone.
        lock(&connection.pending).clear();
        let removed = {
            let mut connections = lock(&self.connections);
            match connections.get(&agent) {
                Some(current) if Arc::ptr_eq(current, &connection) => connections.remove(&agent).is_some(),
                _ => false,
            }
        };
        if removed {
            tracing::warn!(%agent, "agent disconnected");
            self.tell(Change::Dropped(agent));
        }
    }
}
