//! rustls client configuration (feature `tls`), shared by the OTLP exporter's `https://`
//! endpoints and the `https://` HTTP health check: the default provider (aws-lc-rs), trusting
//! the system's root certificates (as rustls-native-certs finds them, `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` included) or the certificates of one CA file alone, with an optional client
//! certificate for mutual TLS.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Why a configuration could not be made.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// No CA file was given and the system has no root certificates.
    NoRoots,
    /// A file, or the configuration, is not usable: the message says which and why.
    Other(String),
}

/// A client configuration trusting the certificates of `ca` when given, else the system's,
/// and presenting `client` (certificate chain and key PEM files) when given.
pub(crate) fn client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, ConfigError> {
    config_with(trusted_roots(ca)?, client)
}

/// The certificates of `ca` when given, else the system's; an error when there are none.
fn trusted_roots(ca: Option<&Path>) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| ConfigError::Other(file_error(path, &e)))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::NoRoots);
    }
    Ok(roots)
}

/// A client configuration trusting `roots` (an empty store trusts no server: a configuration
/// kept where a usable one could not be made) and presenting `client` when given.
pub(crate) fn config_with(
    roots: RootCertStore,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Other(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ConfigError::Other(file_error(key, &e)))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ConfigError::Other(format!("client certificate {}: {e}", cert.display()))
            })
        }
    }
}

/// Whether TLS itself failed somewhere in `e`'s chain of causes (a rustls error: a certificate
/// that does not verify, an alert from the other side, no protocol both support), rather
/// than the connection under it.
#[cfg(feature = "otel")]
pub(crate) fn refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// The certificates of a PEM file; an error when it has none.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError::Other(file_error(path, &e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Other(file_error(path, &e)))?;
    if certs.is_empty() {
        return Err(ConfigError::Other(file_error(path, &"no certificate")));
    }
    Ok(certs)
}

fn file_error(path: &Path, e: &dyn std::fmt::Display) -> String {
    format!("TLS file {}: {e}", path.display())
}
