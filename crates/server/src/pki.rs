//! The server's certificate authority for its agents: it signs each agent's certificate at
//! enrollment, and the channel's own certificate, so that server and agents authenticate
//! each other on the agent channel (mutual TLS) without any outside authority.
//!
//! Files, in `DATA_DIR/pki/` (0700): `ca.pem`, `ca.key` (0600), `channel.pem`,
//! `channel.key` (0600). The authority is made at the first start and kept; the channel's
//! certificate is made again whenever the names it must carry change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

use crate::ops::{Result, ServerError};

/// The authority's name, in every certificate it signs.
const CA_NAME: &str = "thinclone agent authority";

pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_key: KeyPair,
    channel_pem: String,
    channel_key_pem: String,
}

fn internal(what: &str) -> impl FnOnce(String) -> ServerError + '_ {
    move |e| ServerError::Internal(format!("{what}: {e}"))
}

/// The SHA-256 fingerprint of a certificate (DER), in hex: how agents are known.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    sys::crashsafe::replace_file(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
}

/// An agent's public key as the join request carries it: an uncompressed P-256 point.
struct RawPublicKey(Vec<u8>);

impl PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl Pki {
    /// Opens (or makes) the authority in `data_dir/pki`, with a channel certificate for
    /// `names` (host names and addresses agents dial).
    pub fn open(data_dir: &Path, names: &[String]) -> Result<Pki> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|e| internal("making the pki directory")(e.to_string()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| internal("securing the pki directory")(e.to_string()))?;
        let (ca_pem, ca_key) =
            match (std::fs::read_to_string(dir.join("ca.pem")), std::fs::read_to_string(dir.join("ca.key"))) {
                (Ok(pem), Ok(key)) => {
                    (pem, KeyPair::from_pem(&key).map_err(|e| internal("reading ca.key")(e.to_string()))?)
                }
                _ => {
                    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                        .map_err(|e| internal("making the authority's key")(e.to_string()))?;
                    let cert =
                        ca_params().self_signed(&key).map_err(|e| internal("making the authority")(e.to_string()))?;
                    write_private(&dir.join("ca.key"), &key.serialize_pem())
                        .map_err(|e| internal("writing ca.key")(e.to_string()))?;
                    sys::crashsafe::replace_file(&dir.join("ca.pem"), cert.pem().as_bytes())
                        .map_err(|e| internal("writing ca.pem")(e.to_string()))?;
                    (cert.pem(), key)
                }
            };
        let mut pki = Pki { dir, ca_pem, ca_key, channel_pem: String::new(), channel_key_pem: String::new() };
        pki.channel_certificate(names)?;
        Ok(pki)
    }

    fn issuer(&self) -> Issuer<'static, &KeyPair> {
        Issuer::new(ca_params(), &self.ca_key)
    }

    /// The channel's certificate for `names`: kept if it names them all, else made again.
    fn channel_certificate(&mut self, names: &[String]) -> Result<()> {
        let names_file = self.dir.join("channel.names");
        let wanted = names.join("\n");
        let kept = std::fs::read_to_string(&names_file).ok().as_deref() == Some(wanted.as_str());
        if let (true, Ok(pem), Ok(key)) = (
            kept,
            std::fs::read_to_string(self.dir.join("channel.pem")),
            std::fs::read_to_string(self.dir.join("channel.key")),
        ) {
            self.channel_pem = pem;
            self.channel_key_pem = key;
            return Ok(());
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| internal("making the channel's key")(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "thinclone server");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| internal("naming the channel's certificate")(e.to_string()))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer())
            .map_err(|e| internal("signing the channel's certificate")(e.to_string()))?;
        write_private(&self.dir.join("channel.key"), &key.serialize_pem())
            .map_err(|e| internal("writing channel.key")(e.to_string()))?;
        sys::crashsafe::replace_file(&self.dir.join("channel.pem"), cert.pem().as_bytes())
            .map_err(|e| internal("writing channel.pem")(e.to_string()))?;
        sys::crashsafe::replace_file(&names_file, wanted.as_bytes())
            .map_err(|e| internal("writing channel.names")(e.to_string()))?;
        self.channel_pem = cert.pem();
        self.channel_key_pem = key.serialize_pem();
        Ok(())
    }

    /// The authority's certificate (PEM), which agents trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The fingerprint of the authority's certificate, carried in enrollment tokens so that a
    /// joining agent can check it talks to this server.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&pem_der(&self.ca_pem).unwrap_or_default())
    }

    /// Signs a certificate for agent `name`'s public key (an uncompressed P-256 point, hex).
    /// Returns it as PEM, with its fingerprint.
    pub fn sign_agent(&self, name: &api::Name, public_key_hex: &str) -> Result<(String, String)> {
        let raw = hex_decode(public_key_hex)
            .filter(|b| b.len() == 65 && b[0] == 4)
            .ok_or_else(|| ServerError::BadRequest("public_key is not an uncompressed P-256 point in hex".into()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("thinclone agent {name}"));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            format!("{name}.agents.thinclone").try_into().map_err(|e| internal("naming")(format!("{e}")))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&RawPublicKey(raw), &self.issuer())
            .map_err(|e| internal("signing the agent's certificate")(e.to_string()))?;
        Ok((cert.pem(), fingerprint(cert.der())))
    }

    /// The TLS configuration of the agent channel: the channel's certificate, and agents'
    /// certificates required and checked against the authority.
    pub fn channel_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                pem_der(&self.ca_pem).ok_or_else(|| internal("ca.pem")("not PEM".into()))?,
            ))
            .map_err(|e| internal("trusting the authority")(e.to_string()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| internal("the agents' certificate check")(e.to_string()))?;
        let chain = vec![rustls::pki_types::CertificateDer::from(
            pem_der(&self.channel_pem).ok_or_else(|| internal("channel.pem")("not PEM".into()))?,
        )];
        let key = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(self.channel_key_pem.as_bytes())
                .map_err(|e| internal("the channel's key")(e.to_string()))?
        };
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| internal("TLS versions")(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| internal("the channel's certificate")(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// The DER of the first PEM block of `pem`.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).map(|c| c.to_vec()).ok().or_else(|| {
        rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok().map(|k| k.secret_der().to_vec())
    })
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_kept_and_signs_agents() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let again = Pki::open(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(pki.ca_fingerprint(), again.ca_fingerprint());
        assert_eq!(pki.ca_fingerprint().len(), 64);
        let agent_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let public: String = agent_key.public_key_raw().iter().map(|b| format!("{b:02x}")).collect();
        let name = api::Name::new("host-1").unwrap();
        let (pem, print) = pki.sign_agent(&name, &public).unwrap();
        assert_eq!(fingerprint(&pem_der(&pem).unwrap()), print);
        assert!(pki.sign_agent(&name, "abcd").is_err());
        pki.channel_tls().unwrap();
        let mode = std::fs::metadata(dir.path().join("pki/ca.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }
}
