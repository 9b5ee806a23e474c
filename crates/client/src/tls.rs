//! TLS for `https://` servers: which certificate authorities the client trusts, and why a
//! server's certificate was refused, in words.
//!
//! By default a server's certificate must chain to one of the public authorities built into
//! the client (Mozilla's list, as webpki-roots ships it). With [`crate::Client::with_ca_file`]
//! (the CLI's `--ca-file`) it must chain to the authorities in that file instead, and to
//! nothing else: a team server with its own CA is trusted only through that CA.

use std::path::Path;
use std::sync::Arc;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::error::{Error, Result};

/// The certificate authorities a client trusts instead of the built-in ones, and where they
/// came from (a file's path), for messages.
#[derive(Debug, Clone)]
pub(crate) struct TrustedCa {
    pub(crate) origin: String,
    certs: Arc<Vec<Certificate<'static>>>,
}

impl TrustedCa {
    /// The authorities in a PEM file: one or more `CERTIFICATE` blocks.
    pub(crate) fn from_file(path: &Path) -> Result<TrustedCa> {
        let origin = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| Error::BadCa { origin: origin.clone(), why: e.to_string() })?;
        TrustedCa::from_pem(&pem, &origin)
    }

    /// The authorities in PEM text; `origin` names it in messages.
    pub(crate) fn from_pem(pem: &[u8], origin: &str) -> Result<TrustedCa> {
        let bad = |why: String| Error::BadCa { origin: origin.to_owned(), why };
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            // A key beside the certificates (a combined file) is not the client's business.
            if let PemItem::Certificate(cert) = item.map_err(|e| bad(format!("it is not valid PEM: {e}")))? {
                certs.push(cert);
            }
        }
        if certs.is_empty() {
            return Err(bad("it holds no `BEGIN CERTIFICATE` block".to_owned()));
        }
        // ureq would skip a certificate it cannot use as a trust anchor without a word:
        // check each here, so that a bad file is an error rather than trust in nothing.
        for (i, cert) in certs.iter().enumerate() {
            let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
            rustls::RootCertStore::empty()
                .add(der)
                .map_err(|e| bad(format!("certificate {} of {} cannot be used: {e}", i + 1, certs.len())))?;
        }
        Ok(TrustedCa { origin: origin.to_owned(), certs: Arc::new(certs) })
    }
}

/// The TLS settings of a client: the built-in authorities, or only `ca`'s.
pub(crate) fn config(ca: Option<&TrustedCa>) -> TlsConfig {
    let roots = match ca {
        Some(ca) => RootCerts::Specific(Arc::clone(&ca.certs)),
        None => RootCerts::WebPki,
    };
    TlsConfig::builder().root_certs(roots).build()
}

/// The TLS failure behind a transport error, if it is one.
pub(crate) fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(e) => Some(e),
        // A failed handshake reaches ureq as an I/O error carrying rustls's.
        ureq::Error::Io(e) => e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// Describes a TLS failure talking to the server at `url`; `ca` is where the trusted
/// authorities came from, if not built in.
pub(crate) fn describe(e: &rustls::Error, url: &str, ca: Option<&TrustedCa>) -> Error {
    use rustls::CertificateError as C;
    let ca = ca.map(|ca| ca.origin.clone());
    let untrusted = |why: String| Error::UntrustedCertificate { url: url.to_owned(), why, ca: ca.clone() };
    match e {
        rustls::Error::InvalidCertificate(cert) => untrusted(match cert {
            // BadSignature: a trusted authority's name, but not its signature.
            C::UnknownIssuer | C::BadSignature => match &ca {
                Some(ca) => format!("it is not signed by the authority in {ca}"),
                None => "it is not signed by an authority this client knows (a private CA, or self-signed)".to_owned(),
            },
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                let names = match cert {
                    C::NotValidForNameContext { presented, .. } => format!(" (it names {})", presented.join(", ")),
                    _ => String::new(),
                };
                format!("it is not made out to the host in the URL{names}")
            }
            C::Expired | C::ExpiredContext { .. } => "it has expired".to_owned(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "it is not valid yet (is this machine's clock right?)".to_owned()
            }
            C::Revoked => "it has been revoked".to_owned(),
            // webpki's reason is only in the text of `Other`.
            C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "it is a CA's certificate (basicConstraints CA:TRUE), which a server cannot present as its own; \
                 give the server one signed by a CA, or a self-signed one made with \
                 `-addext basicConstraints=critical,CA:FALSE`"
                    .to_owned()
            }
            other => format!("{}", rustls::Error::InvalidCertificate(other.clone())),
        }),
        rustls::Error::InvalidMessage(_) => Error::Tls {
            url: url.to_owned(),
            why: format!("the server does not answer in TLS ({e}); if it serves plain HTTP, use an http:// URL"),
        },
        other => Error::Tls { url: url.to_owned(), why: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    use super::*;
    use crate::Client;

    /// A certificate authority, and a server certificate it signed.
    struct Pki {
        ca_pem: String,
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
    }

    fn make_pki(names: &[&str]) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(rcgen::DnType::CommonName, "thinclone test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        Pki { ca_pem: ca_cert.pem(), cert_der: leaf_cert.der().to_vec(), key_der: leaf_key.serialize_der() }
    }

    /// A self-signed server certificate, marked as a CA's or not; it is its own authority.
    fn self_signed(names: &[&str], is_ca: bool) -> Pki {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.is_ca = if is_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki { ca_pem: cert.pem(), cert_der: cert.der().to_vec(), key_der: key.serialize_der() }
    }

    /// An HTTPS server on a loopback port that answers every request with a health answer
    /// and records the request lines it got; connections whose handshake fails count for
    /// nothing.
    struct TlsServer {
        url: String,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Vec<String>>,
    }

    impl TlsServer {
        fn start(pki: &Pki) -> TlsServer {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![rustls::pki_types::CertificateDer::from(pki.cert_der.clone())],
                    rustls::pki_types::PrivatePkcs8KeyDer::from(pki.key_der.clone()).into(),
                )
                .unwrap();
            let config = Arc::new(config);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = Arc::clone(&stop);
            let thread = std::thread::spawn(move || {
                let mut lines = Vec::new();
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Some(line) = answer(stream, Arc::clone(&config)) {
                        lines.push(line);
                    }
                }
                lines
            });
            TlsServer { url: format!("https://127.0.0.1:{port}"), stop, thread }
        }

        /// Stops the server and returns the request lines it answered.
        fn requests(self) -> Vec<String> {
            self.stop.store(true, Ordering::SeqCst);
            // Wakes the accept loop.
            drop(TcpStream::connect(self.url.trim_start_matches("https://")));
            self.thread.join().unwrap()
        }
    }

    fn answer(stream: TcpStream, config: Arc<rustls::ServerConfig>) -> Option<String> {
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let conn = rustls::ServerConnection::new(config).ok()?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        let mut reader = BufReader::new(&mut tls);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
                break;
            }
        }
        let body = r#"{"status": "ok", "version": "0.1.0"}"#;
        write!(
            tls,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        tls.flush().ok()?;
        tls.conn.send_close_notify();
        let _ = tls.flush();
        let mut words = request_line.split_whitespace();
        Some(format!("{} {}", words.next()?, words.next()?))
    }

    #[test]
    fn an_https_server_is_trusted_through_its_ca() {
        let pki = make_pki(&["127.0.0.1", "localhost"]);
        let server = TlsServer::start(&pki);
        let client = Client::new(&server.url).with_ca_pem(pki.ca_pem.as_bytes(), "ca.pem").unwrap();
        assert_eq!(client.health().unwrap().status, "ok");
        // The same CA from a file, and the server by its other name.
        let dir = tempfile_dir();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let by_name = server.url.replace("127.0.0.1", "localhost");
        assert_eq!(Client::new(&by_name).with_ca_file(&ca_file).unwrap().health().unwrap().version, "0.1.0");
        assert_eq!(server.requests(), ["GET /v1/health", "GET /v1/health"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_certificate_is_refused_before_anything_is_sent() {
        let pki = make_pki(&["127.0.0.1"]);
        let server = TlsServer::start(&pki);
        let err = Client::new(&server.url).with_token(Some("secret".into())).list_images().unwrap_err();
        assert!(matches!(err, Error::UntrustedCertificate { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "the server's certificate at {} is not trusted: it is not signed by an authority this client knows \
                 (a private CA, or self-signed); pass --ca-file (or set THINCLONE_CA_FILE) with the certificate of \
                 the authority that signed it",
                server.url
            )
        );
        // Another CA than the one that signed it is no better.
        let other = make_pki(&["127.0.0.1"]);
        let err = Client::new(&server.url).with_ca_pem(other.ca_pem.as_bytes(), "other-ca.pem").unwrap();
        let err = err.health().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the server's certificate at {} is not trusted: it is not signed by the authority in other-ca.pem; \
                 only the authority in other-ca.pem is trusted for it: pass --ca-file with the certificate of the \
                 authority that signed it",
                server.url
            )
        );
        // No request (and so no token) ever reached the server.
        assert_eq!(server.requests(), Vec::<String>::new());
    }

    #[test]
    fn a_certificate_for_another_name_is_refused() {
        let pki = make_pki(&["db.example.com"]);
        let server = TlsServer::start(&pki);
        let client = Client::new(&server.url).with_ca_pem(pki.ca_pem.as_bytes(), "ca.pem").unwrap();
        let err = client.health().unwrap_err();
        assert!(matches!(err, Error::UntrustedCertificate { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("is not trusted: it is not made out to the host in the URL (it names"), "{text}");
        assert!(text.contains("db.example.com"), "{text}");
        server.requests();
    }

    #[test]
    fn a_self_signed_certificate_is_trusted_as_its_own_authority_unless_it_is_a_cas() {
        let pinned = self_signed(&["127.0.0.1"], false);
        let server = TlsServer::start(&pinned);
        let client = Client::new(&server.url).with_ca_pem(pinned.ca_pem.as_bytes(), "server.pem").unwrap();
        assert_eq!(client.health().unwrap().status, "ok");
        assert_eq!(server.requests(), ["GET /v1/health"]);

        // What `openssl req -x509` makes unless told otherwise: a CA's certificate.
        let ca_flagged = self_signed(&["127.0.0.1"], true);
        let server = TlsServer::start(&ca_flagged);
        let client = Client::new(&server.url).with_ca_pem(ca_flagged.ca_pem.as_bytes(), "server.pem").unwrap();
        let text = client.health().unwrap_err().to_string();
        assert!(
            text.contains("is not trusted: it is a CA's certificate (basicConstraints CA:TRUE), which a server cannot"),
            "{text}"
        );
        assert!(text.contains("`-addext basicConstraints=critical,CA:FALSE`"), "{text}");
        server.requests();
    }

    #[test]
    fn an_http_url_at_an_https_server_says_so() {
        let pki = make_pki(&["127.0.0.1"]);
        let server = TlsServer::start(&pki);
        let url = server.url.replace("https://", "http://");
        let err = Client::new(&url).health().unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.to_string().ends_with("; if the server serves https, use an https:// URL"), "{err}");
        server.requests();
    }

    #[test]
    fn an_https_url_at_a_plain_http_server_says_so() {
        // A plain HTTP server answers a TLS hello, which it cannot read, with a 400.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut hello = [0u8; 64];
            let _ = std::io::Read::read(&mut stream, &mut hello);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        });
        let err = Client::new(&url).health().unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "TLS with the thinclone server at {url} failed: the server does not answer in TLS"
            )),
            "{text}"
        );
        assert!(text.ends_with("if it serves plain HTTP, use an http:// URL"), "{text}");
        server.join().unwrap();
    }

    #[test]
    fn a_ca_file_without_a_usable_certificate_is_an_error() {
        let dir = tempfile_dir();
        let missing = dir.join("missing.pem");
        let err = Client::new("https://127.0.0.1:1").with_ca_file(&missing).unwrap_err();
        assert!(matches!(err, Error::BadCa { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot use {} as the certificate authority to trust: ", missing.display())),
            "{err}"
        );
        let key_only = KeyPair::generate().unwrap().serialize_pem();
        let err = Client::new("https://127.0.0.1:1").with_ca_pem(key_only.as_bytes(), "key.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot use key.pem as the certificate authority to trust: it holds no `BEGIN CERTIFICATE` block"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let err = Client::new("https://127.0.0.1:1").with_ca_pem(garbage.as_bytes(), "bad.pem").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "cannot use bad.pem as the certificate authority to trust: certificate 1 of 1 cannot be used"
            ),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A fresh private directory for a test's files.
    fn tempfile_dir() -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "thinclone-client-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
