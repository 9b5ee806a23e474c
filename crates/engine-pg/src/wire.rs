//! One simple query over an instance's private Unix socket, spoken in PostgreSQL's
//! frontend/backend protocol (messages built and parsed by `postgres-protocol`) rather than
//! through a `psql` process: for what runs at every start of a clone, its password, where
//! starting psql was a tenth of the clone's time to ready.
//!
//! Only what the private socket needs: the socket's `peer` authentication (no password is
//! ever sent), the simple query protocol, and errors. Rows are not returned.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use engine::{Error, Result};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;

/// Connects to the server listening on `socket` as `user` to `database`, with the startup
/// `parameters` besides (`options`: settings for the session), runs `sql` (one or several
/// statements, as one implicit transaction) and disconnects. A server error is returned as
/// its message.
pub(crate) fn simple_query(
    socket: &Path,
    user: &str,
    database: &str,
    parameters: &[(&str, &str)],
    sql: &str,
    timeout: Duration,
) -> Result<()> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| Error::Other(format!("connecting to the server's socket {}: {e}", socket.display())))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = BytesMut::new();
    let mut startup = vec![("user", user), ("database", database), ("application_name", "thinclone")];
    startup.extend_from_slice(parameters);
    frontend::startup_message(startup, &mut out)?;
    stream.write_all(&out)?;
    let mut input = BytesMut::new();
    // Authentication, then the server's parameters, until it is ready for a query.
    loop {
        match next_message(&mut stream, &mut input)? {
            Message::AuthenticationOk => {}
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            Message::ReadyForQuery(_) => break,
            message if is_authentication_request(&message) => {
                return Err(Error::Other(format!(
                    "the server on {} asked for a password on its private socket, whose peer authentication \
                     should have let this process in",
                    socket.display()
                )))
            }
            _ => {}
        }
    }
    out.clear();
    frontend::query(sql, &mut out)?;
    stream.write_all(&out)?;
    let mut failed = None;
    loop {
        match next_message(&mut stream, &mut input)? {
            Message::ErrorResponse(body) => failed = Some(server_error(&body)),
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    out.clear();
    frontend::terminate(&mut out);
    // The answer is in; a server that has gone meanwhile changes nothing.
    if let Err(e) = stream.write_all(&out) {
        tracing::debug!("ending the session: {e}");
    }
    failed.map_or(Ok(()), Err)
}

/// The next message from the server, reading more of its stream as needed.
fn next_message(stream: &mut UnixStream, input: &mut BytesMut) -> Result<Message> {
    loop {
        if let Some(message) = Message::parse(input)? {
            return Ok(message);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(Error::Other("the server closed the connection".into()));
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

fn is_authentication_request(message: &Message) -> bool {
    matches!(
        message,
        Message::AuthenticationCleartextPassword
            | Message::AuthenticationMd5Password(_)
            | Message::AuthenticationSasl(_)
            | Message::AuthenticationSaslContinue(_)
            | Message::AuthenticationSaslFinal(_)
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
    )
}

/// An error the server sent, as psql shows it: `ERROR:  message`.
fn server_error(body: &ErrorResponseBody) -> Error {
    let mut severity = String::from("ERROR");
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => severity = value,
            b'M' => message = value,
            _ => {}
        }
    }
    Error::Other(format!("{severity}:  {message}"))
}
