//! The rustls client configuration of an mqtts:// connection: the private CA of
//! `mqtt.tls.ca_file` (the system roots when empty), the client certificate for mutual TLS, and
//! `mqtt.tls.server_name` when the broker's certificate names another host than the URL.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::settings::tls::provider;
use crate::settings::TlsFiles;

/// Why no TLS configuration could be built (the files were checked at load, so rare).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("no usable CA certificate: {0}")]
    Roots(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn roots(files: &TlsFiles) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match files.ca_certs() {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| TlsSetupError::Roots(format!("mqtt.tls.ca_file: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsSetupError::Roots(
                    "the system has no CA roots (install ca-certificates or set mqtt.tls.ca_file)"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// The client configuration for `files`.
pub(crate) fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(files)?), provider.clone())
            .build()
            .map_err(|e| TlsSetupError::Roots(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &files.server_name {
        Some(name) => Arc::new(NamedVerifier {
            inner: webpki,
            name: ServerName::try_from(name.clone())
                .map_err(|e| TlsSetupError::Roots(format!("mqtt.tls.server_name: {e}")))?,
        }),
        None => webpki,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match files.identity() {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Full WebPKI verification, against the configured name instead of the URL's host.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
