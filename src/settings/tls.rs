//! TLS files of `mqtt.tls.*` and `influx.tls.*`: read once when the configuration is loaded
//! (and on SIGHUP), checked as PEM, the client key matched against its certificate. The key is
//! held as a [`Secret`]; it may come from the systemd credential `<prefix>-client-key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::raw::RawTls;
use super::secret::{credential_path, Secret, SecretSource};
use crate::error::ConfigError;

/// A PEM file as read: where from, and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Pem {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// What one TLS client needs: a private CA (system roots when `None`), an optional client
/// certificate with its key (mutual TLS), and the name the server's certificate must carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsFiles {
    pub ca: Option<Pem>,
    pub client_cert: Option<Pem>,
    /// The client key's PEM text.
    pub client_key: Option<Secret>,
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The client certificate chain and key as rustls takes them (checked at load: they parse).
    pub fn identity(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let (cert, key) = (self.client_cert.as_ref()?, self.client_key.as_ref()?);
        let certs = certs(&cert.bytes).ok()?;
        let key = rustls_pemfile::private_key(&mut key.expose().as_bytes())
            .ok()
            .flatten()?;
        Some((certs, key))
    }

    /// The CA certificates of `ca`, if set.
    pub fn ca_certs(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.ca.as_ref().and_then(|ca| certs(&ca.bytes).ok())
    }

    pub fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }
}

fn certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let found: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &bytes[..]).collect();
    match found {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()),
        Err(e) => Err(format!("is not valid PEM: {e}")),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        ConfigError::new(
            key,
            format!("cannot read {}: {e}", path.display()),
            "point it at a readable PEM file (the service user must be able to read it)",
        )
    })
}

/// Reads and checks the files `raw` names under `section` (`mqtt.tls` or `influx.tls`); the key
/// falls back to the systemd credential `credential` when `client_key_file` is empty.
pub(super) fn load(section: &str, raw: &RawTls, credential: &str) -> Result<TlsFiles, ConfigError> {
    let k = |name: &str| format!("{section}.{name}");
    let pem = |name: &str, file: &str| -> Result<Option<Pem>, ConfigError> {
        if file.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(file);
        let bytes = read(&k(name), &path)?;
        certs(&bytes).map_err(|e| {
            ConfigError::new(
                k(name),
                format!("{file} {e}"),
                "give the PEM certificate file (not the key, not DER)",
            )
        })?;
        Ok(Some(Pem { path, bytes }))
    };
    let ca = pem("ca_file", &raw.ca_file)?;
    let client_cert = pem("client_cert_file", &raw.client_cert_file)?;
    let key_from = if !raw.client_key_file.is_empty() {
        Some((
            PathBuf::from(&raw.client_key_file),
            SecretSource::File(raw.client_key_file.clone()),
        ))
    } else {
        credential_path(credential).map(|p| (p, SecretSource::Credential(credential.to_string())))
    };
    let client_key = match key_from {
        None => None,
        Some((path, source)) => {
            let bytes = read(&k("client_key_file"), &path)?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ConfigError::new(
                    k("client_key_file"),
                    format!("{} is not a PEM text file", path.display()),
                    "give the PEM private key (-----BEGIN PRIVATE KEY-----)",
                )
            })?;
            Some(Secret::from_source(text, source))
        }
    };
    let files = TlsFiles {
        ca,
        client_cert,
        client_key,
        server_name: (!raw.server_name.trim().is_empty()).then(|| raw.server_name.trim().into()),
    };
    match (&files.client_cert, &files.client_key) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(ConfigError::new(
                k("client_key_file"),
                "a client certificate is set but no key",
                format!(
                    "set {} or load the credential {credential}",
                    k("client_key_file")
                ),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                k("client_cert_file"),
                "a client key is set but no certificate",
                format!(
                    "set {} to the certificate of that key",
                    k("client_cert_file")
                ),
            ))
        }
        (Some(cert), Some(key)) => check_pair(section, cert, key)?,
    }
    if let Some(name) = &files.server_name {
        rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
            ConfigError::new(
                k("server_name"),
                format!("{name:?} is not a DNS name or IP address"),
                "write the host name the server's certificate carries, e.g. broker.example.org",
            )
        })?;
    }
    Ok(files)
}

/// The key parses and belongs to the certificate (its public key is the certificate's).
fn check_pair(section: &str, cert: &Pem, key: &Secret) -> Result<(), ConfigError> {
    let key_key = format!("{section}.client_key_file");
    let der = rustls_pemfile::private_key(&mut key.expose().as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| {
            ConfigError::new(
                &key_key,
                format!("the key ({}) holds no PEM private key", key.source()),
                "give the PEM private key (PKCS#8, RSA or EC) of the client certificate",
            )
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider.key_provider.load_private_key(der).map_err(|e| {
        ConfigError::new(
            &key_key,
            format!("the key ({}) is not usable: {e}", key.source()),
            "give an RSA, ECDSA or Ed25519 private key",
        )
    })?;
    let certs = certs(&cert.bytes).unwrap_or_default();
    let pair = rustls::sign::CertifiedKey::new(certs, signer);
    match pair.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(ConfigError::new(
                &key_key,
                format!(
                    "the key ({}) does not belong to the certificate {}",
                    key.source(),
                    cert.path.display()
                ),
                format!("give the key of that certificate, or the certificate of that key ({section}.client_cert_file)"),
            ))
        }
        _ => Ok(()),
    }
}

/// A rustls provider for the whole process (ring: no C build, no OpenSSL).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
