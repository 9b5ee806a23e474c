//! The agent channel, agent side: the agent dials the server's channel, proves who it is with
//! the certificate the server's authority signed at enrollment (mutual TLS, the server's
//! certificate checked against that same authority), says hello, and then carries out the
//! server's requests ([`crate::dispatch`]) and answers them, one JSON frame per line.
//!
//! Each request runs on a thread of its own, so that a long image copy never holds up a
//! clone's start. A connection that drops, or a server that falls silent, is dialled again
//! with a growing pause; the agent's clones run on meanwhile, and a request whose answer was
//! lost is asked again by the server (every request is idempotent where that can happen).
//! The server decides what happens to what the agent did while they were apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::agent::{Frame, Request};
use api::Name;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::dispatch::{dispatch, Report};
use crate::Agent;

/// How often the agent pings a server it has not heard from.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// How long the server may stay silent before the agent dials again.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(8);
/// The longest pause between two attempts to reach the server.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest line a frame may be.
const MAX_FRAME: usize = 1 << 20;

/// What the agent needs to reach its server: from enrollment (enroll.rs).
#[derive(Clone)]
pub struct ChannelConfig {
    pub name: Name,
    /// `host:port` of the server's agent channel.
    pub address: String,
    /// The authority that signed the server's channel certificate and the agent's own.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChannelError(String);

impl ChannelConfig {
    /// The TLS configuration: the server checked against the authority, the agent's own
    /// certificate presented.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, ChannelError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| ChannelError(format!("the authority's certificate: {e}")))?;
        roots.add(ca).map_err(|e| ChannelError(format!("trusting the authority: {e}")))?;
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| ChannelError(format!("the agent's certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| ChannelError(format!("the agent's key: {e}")))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ChannelError(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .map_err(|e| ChannelError(format!("the agent's certificate: {e}")))?;
        Ok(Arc::new(config))
    }

    fn server_name(&self) -> Result<rustls::pki_types::ServerName<'static>, ChannelError> {
        let host = match self.address.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => return Err(ChannelError(format!("{} is not host:port", self.address))),
        };
        rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| ChannelError(format!("{host} is not a host name or address: {e}")))
    }
}

/// Keeps the agent connected to its server until `shutdown` says so, serving its requests.
pub async fn run(agent: Arc<dyn Agent>, config: ChannelConfig, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let tls = match config.tls().and_then(|tls| Ok((tls, config.server_name()?))) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("the agent channel cannot start: {e}");
            return;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(tls.0);
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = connect_and_serve(&agent, &config, &connector, tls.1.clone()) => outcome,
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(()) => tracing::warn!(server = %config.address, "the server closed the channel; dialling again"),
            Err(e) => tracing::warn!(server = %config.address, "the agent channel: {e}; dialling again"),
        }
        // A connection that lasted resets the pause.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect_and_serve(
    agent: &Arc<dyn Agent>,
    config: &ChannelConfig,
    connector: &tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
) -> Result<(), ChannelError> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&config.address))
        .await
        .map_err(|_| ChannelError("connecting timed out".into()))?
        .map_err(|e| ChannelError(format!("connecting: {e}")))?;
    // Only latency: frames are small and answered at once; a refusal changes nothing else.
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
        .await
        .map_err(|_| ChannelError("the TLS handshake timed out".into()))?
        .map_err(|e| ChannelError(format!("the TLS handshake: {e}")))?;
    let (read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
    tx.send(Frame::Hello { agent: config.name.clone(), version: env!("CARGO_PKG_VERSION").to_owned() })
        .map_err(|_| ChannelError("the writer ended".into()))?;
    let last_heard = Arc::new(std::sync::Mutex::new(Instant::now()));
    let writer_heard = last_heard.clone();
    let writer_tx = tx.clone();
    let mut writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            let frame = tokio::select! {
                frame = rx.recv() => match frame { Some(f) => f, None => return Ok(()) },
                _ = ping.tick() => {
                    let silent = writer_heard.lock().map(|t| t.elapsed()).unwrap_or(SILENCE_LIMIT);
                    if silent >= SILENCE_LIMIT {
                        return Err(ChannelError(format!("the server said nothing for {} s", silent.as_secs())));
                    }
                    Frame::Ping
                }
            };
            let mut line = serde_json::to_vec(&frame).map_err(|e| ChannelError(format!("encoding a frame: {e}")))?;
            line.push(b'\n');
            write.write_all(&line).await.map_err(|e| ChannelError(format!("writing: {e}")))?;
            write.flush().await.map_err(|e| ChannelError(format!("writing: {e}")))?;
        }
    });
    drop(writer_tx);
    tracing::info!(server = %config.address, "connected to the server");
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            ended = &mut writer => {
                return match ended {
                    Ok(result) => result,
                    Err(e) => Err(ChannelError(format!("the writer failed: {e}"))),
                };
            }
        };
        let line = match line {
            Ok(Some(line)) if line.len() <= MAX_FRAME => line,
            Ok(Some(_)) => return Err(ChannelError("the server sent a line too long".into())),
            Ok(None) => return Ok(()),
            Err(e) => return Err(ChannelError(format!("reading: {e}"))),
        };
        *last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        match serde_json::from_str::<Frame>(&line) {
            Ok(Frame::Request { id, request }) => serve(agent.clone(), id, request, tx.clone()),
            Ok(Frame::Ping) => {
                // A closed writer ends the connection anyway; nothing else is to be done.
                let _ = tx.send(Frame::Pong);
            }
            Ok(Frame::Pong) => {}
            Ok(_) => tracing::warn!("the server sent an unexpected frame"),
            Err(e) => tracing::warn!("the server sent a frame that does not parse: {e}"),
        }
    }
}

/// Carries out one request on a thread of its own, sending its progress and its reply.
fn serve(agent: Arc<dyn Agent>, id: u64, request: Request, tx: tokio::sync::mpsc::UnboundedSender<Frame>) {
    let kind = request.kind();
    let spawned = std::thread::Builder::new().name(format!("request-{id}")).spawn(move || {
        let span = tracing::debug_span!("request", id, kind);
        let _entered = span.enter();
        let report = |r: Report| {
            let frame = match r {
                Report::Progress { done, total } => Frame::Progress { id, done, total },
                Report::Step(message) => Frame::Step { id, message: message.to_owned() },
            };
            // A closed connection loses the progress; the reply is what counts.
            let _ = tx.send(frame);
        };
        let result = dispatch(agent.as_ref(), request, &report);
        if let Err(e) = &result {
            tracing::debug!("answered with an error: {e}");
        }
        if tx.send(Frame::Reply { id, result }).is_err() {
            tracing::warn!("the connection closed before the answer could be sent; the server asks again");
        }
    });
    if let Err(e) = spawned {
        tracing::error!("starting a request's thread: {e}");
    }
}
