//! Enrollment: how an agent joins a server, once, and what it keeps of it.
//!
//! `thinclone agent join --server URL --token T` makes the agent a key pair (ECDSA P-256)
//! that never leaves its host, and sends the server its public key with the one-time token.
//! The server answers with the agent's certificate, signed by its authority, the authority's
//! own certificate and the address of its agent channel. The token carries the fingerprint of
//! that authority, so the agent checks that it joined the server the token came from before
//! it trusts anything the answer says.
//!
//! Kept in `DATA_DIR/agent/` (0700, root's): `key.pem` (0600), `cert.pem`, `ca.pem` and
//! `agent.json` (its name, the server's URL and the channel's address).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use api::agent::JoinRequest;
use api::Name;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use sha2::{Digest, Sha256};

use crate::channel::ChannelConfig;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnrollError(String);

fn fail(what: &str) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |e| EnrollError(format!("{what}: {e}"))
}

/// What an agent keeps of its enrollment, besides its keys.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Joined {
    name: Name,
    server: String,
    channel: String,
}

/// The directory an agent keeps its enrollment in.
pub fn enrollment_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent")
}

/// The SHA-256 fingerprint of a certificate (DER), in hex.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// An enrollment token: the secret the server checks, and the fingerprint of the server's
/// authority, as `tce_<secret>_<fingerprint>`.
pub fn split_token(token: &str) -> Result<(&str, &str), EnrollError> {
    let bad = || {
        EnrollError(
            "that is not an enrollment token: an administrator makes one with `thinclone agent token create`".into(),
        )
    };
    let rest = token.trim().strip_prefix("tce_").ok_or_else(bad)?;
    let (secret, print) = rest.split_once('_').ok_or_else(bad)?;
    if secret.is_empty() || print.len() != 64 || !print.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((secret, print))
}

/// Joins the server at `client`'s URL as `name` with `token`, and keeps what it answered in
/// `data_dir/agent/`. An agent that joined already must be removed from there first.
pub fn join(client: &client::Client, token: &str, name: &Name, data_dir: &Path) -> Result<ChannelConfig, EnrollError> {
    let (_, expected) = split_token(token)?;
    let dir = enrollment_dir(data_dir);
    if dir.join("agent.json").exists() {
        return Err(EnrollError(format!(
            "this agent has joined a server already ({}); remove it to join again",
            dir.display()
        )));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| EnrollError(format!("making a key: {e}")))?;
    let public_key: String = key.public_key_raw().iter().map(|b| format!("{b:02x}")).collect();
    let joined = client
        .join_agent(&JoinRequest { token: token.trim().to_owned(), name: name.clone(), public_key })
        .map_err(|e| EnrollError(format!("joining {}: {e}", client.base_url())))?;
    let ca_der = pem_der(&joined.ca).ok_or_else(|| EnrollError("the server answered with no authority".into()))?;
    let got = fingerprint(&ca_der);
    if !got.eq_ignore_ascii_case(expected) {
        return Err(EnrollError(format!(
            "the server's authority is not the one the token names (it is {got}, the token says {expected}): this is \
             not the server that made the token; nothing was kept"
        )));
    }
    fs::create_dir_all(&dir).map_err(fail("making the enrollment directory"))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(fail("securing the enrollment directory"))?;
    sys::crashsafe::replace_file_mode(&dir.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)
        .map_err(fail("writing key.pem"))?;
    sys::crashsafe::replace_file_mode(&dir.join("cert.pem"), joined.certificate.as_bytes(), 0o644)
        .map_err(fail("writing cert.pem"))?;
    sys::crashsafe::replace_file_mode(&dir.join("ca.pem"), joined.ca.as_bytes(), 0o644)
        .map_err(fail("writing ca.pem"))?;
    let record = Joined { name: name.clone(), server: client.base_url().to_owned(), channel: joined.channel.clone() };
    let mut text = serde_json::to_vec_pretty(&record).map_err(|e| EnrollError(e.to_string()))?;
    text.push(b'\n');
    // Written last: an agent with agent.json has everything.
    sys::crashsafe::replace_file_mode(&dir.join("agent.json"), &text, 0o600).map_err(fail("writing agent.json"))?;
    load(data_dir)
}

/// What the agent in `data_dir` kept when it joined, or a message that says to join.
pub fn load(data_dir: &Path) -> Result<ChannelConfig, EnrollError> {
    let dir = enrollment_dir(data_dir);
    let joined: Joined = match sys::crashsafe::read_json(&dir.join("agent.json")) {
        Ok(Some(j)) => j,
        Ok(None) => {
            return Err(EnrollError(format!(
                "this agent has not joined a server ({} has no agent.json): run `thinclone agent join --server URL \
                 --token TOKEN` with a token from `thinclone agent token create`",
                dir.display()
            )))
        }
        Err(e) => return Err(EnrollError(format!("reading {}: {e}", dir.join("agent.json").display()))),
    };
    let read = |file: &str| fs::read_to_string(dir.join(file)).map_err(|e| EnrollError(format!("reading {file}: {e}")));
    Ok(ChannelConfig {
        name: joined.name,
        address: joined.channel,
        ca_pem: read("ca.pem")?,
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
    })
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_authority() {
        let print = "ab".repeat(32);
        let token = format!("tce_s3cret_{print}");
        assert_eq!(split_token(&token).unwrap(), ("s3cret", print.as_str()));
        assert!(split_token("tce_s3cret").is_err());
        assert!(split_token(&format!("tcx_s3cret_{print}")).is_err());
        assert!(split_token("tce_s3cret_abcd").is_err());
    }
}
