//! A mount's control socket: how another process asks a running mount for a checkpoint of
//! its live tree, without unmounting it.
//!
//! # Protocol
//!
//! The mount listens on the unix socket `LAYER_DIR/control` (mode 0600) while it serves the
//! layer directory; the socket is made afresh at each mount (a stale one, left by a mount that
//! was killed, is replaced) and removed at unmount. One request per connection: the client
//! writes one line, the server answers one line and closes.
//!
//! ```text
//! checkpoint\n      →  ok <id of the layer frozen>\n  |  error <message>\n
//! sync\n            →  ok\n                             |  error <message>\n
//! ```
//!
//! [`checkpoint_mounted`] and [`sync_mounted`] are the clients. Requests are served one at a time, by one thread.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fs::CowFs;

/// The name of the socket in the layer directory.
pub const SOCKET: &str = "control";

/// The longest request or answer line read.
const MAX_LINE: usize = 4096;

/// How long the server waits for a client's request, and for it to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the mount serving `layer_dir` (a running `thinclone mount`, or any [`crate::mount`])
/// for a checkpoint of its live tree ([`CowFs::checkpoint_live`]), and returns the id of the
/// layer it froze, which [`crate::LayerStack::revert_to`] takes once the mount is stopped.
///
/// Fails when no mount serves `layer_dir` (`NotFound` or `ConnectionRefused`), when the mount
/// does not answer within `timeout` (`TimedOut`; the checkpoint may still happen), and with
/// the mount's own message when the checkpoint fails.
pub fn checkpoint_mounted(layer_dir: &Path, timeout: Duration) -> io::Result<u64> {
    let deadline = Instant::now() + timeout;
    let answer = request(layer_dir, "checkpoint", deadline)?;
    let what = || format!("checkpoint of the mount of layer directory {}", layer_dir.display());
    if let Some(id) = answer.strip_prefix("ok ") {
        return id
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{}: bad answer {answer:?}", what())));
    }
    Err(not_done(&what(), &answer))
}

/// Asks the mount serving `layer_dir` to make everything it holds durable, as it does at
/// unmount ([`CowFs::sync_all`]): every file's data and block map, and the layer's journal.
/// A mount kept after its clients stopped is then as safe as an unmounted layer.
///
/// Fails as [`checkpoint_mounted`] does.
pub fn sync_mounted(layer_dir: &Path, timeout: Duration) -> io::Result<()> {
    let answer = request(layer_dir, "sync", Instant::now() + timeout)?;
    if answer.trim_end() == "ok" {
        return Ok(());
    }
    Err(not_done(&format!("sync of the mount of layer directory {}", layer_dir.display()), &answer))
}

/// The error for an answer that is not the request's success: the mount's own message
/// (`error MESSAGE`), or an answer the protocol does not know.
fn not_done(what: &str, answer: &str) -> io::Error {
    match answer.strip_prefix("error ") {
        Some(message) => io::Error::other(format!("{what}: {message}")),
        None => io::Error::new(io::ErrorKind::InvalidData, format!("{what}: bad answer {answer:?}")),
    }
}

/// Sends one request line to the mount of `layer_dir` and returns its answer line.
fn request(layer_dir: &Path, request: &str, deadline: Instant) -> io::Result<String> {
    let path = layer_dir.join(SOCKET);
    let context = |e: io::Error, doing: &str| {
        let kind = match e.kind() {
            io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut,
            kind => kind,
        };
        io::Error::new(kind, format!("{doing} the control socket {} of a mount: {e}", path.display()))
    };
    let mut stream = with_short_path(&path, |p| UnixStream::connect(p)).map_err(|e| context(e, "connecting to"))?;
    let remaining = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(remaining())).map_err(|e| context(e, "writing to"))?;
    stream.write_all(format!("{request}\n").as_bytes()).map_err(|e| context(e, "writing to"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if Instant::now() >= deadline {
            return Err(context(io::Error::from(io::ErrorKind::TimedOut), "waiting for an answer on"));
        }
        stream.set_read_timeout(Some(remaining())).map_err(|e| context(e, "reading from"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(context(e, "waiting for an answer on")),
        }
        if answer.contains(&b'\n') || answer.len() > MAX_LINE {
            break;
        }
    }
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    if answer.is_empty() {
        return Err(context(io::Error::from(io::ErrorKind::UnexpectedEof), "waiting for an answer on"));
    }
    Ok(String::from_utf8_lossy(line).into_owned())
}

/// The control socket of a running mount, served by a thread of its own until dropped.
pub(crate) struct Server {
    path: PathBuf,
    /// Dropping it wakes the thread, which then ends.
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

/// Makes the control socket of `fs`'s layer directory, replacing a stale one, and serves it.
pub(crate) fn serve(tree: Arc<CowFs>) -> io::Result<Server> {
    let dir = tree.stack().dir().to_owned();
    let path = dir.join(SOCKET);
    // Bound under a temporary name, made private, then renamed over whatever a killed mount
    // left: the socket appears whole, with its mode. The layer directory's lock, which this
    // process holds, keeps any other mount away.
    let tmp = dir.join(format!("{SOCKET}.{}.tmp", std::process::id()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = with_short_path(&tmp, |p| UnixListener::bind(p))?;
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = placed {
        // The error that matters is the one answered; a temporary socket left behind harms
        // nothing (each mount binds under a name of its own pid, and clears it first).
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Never blocks in accept: a client that went away between poll and accept is no reason
    // to stop serving.
    listener.set_nonblocking(true)?;
    let (wake, woken) = UnixStream::pair()?;
    let thread = std::thread::Builder::new()
        .name("cowfs-control".into())
        .spawn(move || accept_loop(&tree, &listener, &woken))?;
    Ok(Server { path, wake: Some(wake), thread: Some(thread) })
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the control socket's thread panicked");
            }
        }
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "could not remove the control socket: {e}");
            }
        }
    }
}

fn accept_loop(fs: &CowFs, listener: &UnixListener, woken: &UnixStream) {
    loop {
        let mut fds = [
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: woken.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll on an array of two pollfds of descriptors we own.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("the control socket stops: poll: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(fs, stream) {
                    tracing::warn!("control socket: {e}");
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                // Out of descriptors, most likely: give the process a moment.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request from `stream`, carries it out and answers.
fn answer(fs: &CowFs, mut stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 256];
    while !request.contains(&b'\n') && request.len() <= MAX_LINE {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let reply = match line {
        b"checkpoint" => {
            let _span = tracing::info_span!("checkpoint").entered();
            match fs.checkpoint_live() {
                Ok(id) => format!("ok {id}\n"),
                Err(e) => {
                    tracing::error!("a checkpoint asked for through the control socket failed: {e}");
                    format!("error {}\n", one_line(&e.to_string()))
                }
            }
        }
        b"sync" => {
            let synced = {
                let _gate = fs.shared();
                fs.sync_all()
            };
            match synced {
                Ok(()) => "ok\n".to_owned(),
                Err(e) => {
                    tracing::error!("a sync asked for through the control socket failed: {e}");
                    format!("error {}\n", one_line(&e.to_string()))
                }
            }
        }
        other => format!("error unknown request {:?}\n", String::from_utf8_lossy(other)),
    };
    stream.write_all(reply.as_bytes())
}

fn one_line(message: &str) -> String {
    message.replace(['\n', '\r'], " ")
}

/// Calls `f` with `path`, or, when `path` is too long for a socket address (108 bytes), with
/// an equivalent short path through a descriptor of its directory.
fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    const SUN_PATH: usize = 108;
    if path.as_os_str().as_bytes().len() < SUN_PATH {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = fs::File::open(dir)?;
    f(&Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LayerStack, Options};

    fn tree(layers: &Path, image: &Path) -> Arc<CowFs> {
        Arc::new(CowFs::new(LayerStack::open(layers, image).unwrap(), Options::default()).unwrap())
    }

    #[test]
    fn a_checkpoint_through_the_socket_freezes_the_writable_layer() {
        let image = tempfile::tempdir().unwrap();
        let layers = tempfile::tempdir().unwrap();
        // A stale socket of a killed mount is replaced.
        drop(UnixListener::bind(layers.path().join(SOCKET)).unwrap());
        let fs = tree(layers.path(), image.path());
        let writable = fs.stack().writable_id();
        let server = serve(fs.clone()).unwrap();
        let mode = fs::metadata(layers.path().join(SOCKET)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let id = checkpoint_mounted(layers.path(), Duration::from_secs(10)).unwrap();
        assert_eq!(id, writable);
        assert_eq!(fs.stack().frozen_ids(), [id]);
        let again = checkpoint_mounted(layers.path(), Duration::from_secs(10)).unwrap();
        assert_eq!(fs.stack().frozen_ids(), [id, again]);
        sync_mounted(layers.path(), Duration::from_secs(10)).unwrap();

        let answer = request(layers.path(), "nonsense", Instant::now() + Duration::from_secs(10)).unwrap();
        assert!(answer.starts_with("error unknown request"), "{answer}");

        drop(server);
        assert!(!layers.path().join(SOCKET).exists(), "the socket outlived its server");
        let err = checkpoint_mounted(layers.path(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("control socket"), "{err}");
        let err = sync_mounted(layers.path(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn a_stale_socket_is_refused_with_a_clear_error() {
        let layers = tempfile::tempdir().unwrap();
        drop(UnixListener::bind(layers.path().join(SOCKET)).unwrap());
        let err = checkpoint_mounted(layers.path(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains(&layers.path().display().to_string()), "{err}");
    }

    #[test]
    fn long_paths_go_through_a_descriptor() {
        let base = tempfile::tempdir().unwrap();
        let deep = base.path().join("d".repeat(60)).join("e".repeat(60));
        fs::create_dir_all(&deep).unwrap();
        let path = deep.join(SOCKET);
        assert!(path.as_os_str().len() > 108);
        let listener = with_short_path(&path, |p| UnixListener::bind(p)).unwrap();
        assert!(path.exists());
        let _client = with_short_path(&path, |p| UnixStream::connect(p)).unwrap();
        listener.accept().unwrap();
    }
}
