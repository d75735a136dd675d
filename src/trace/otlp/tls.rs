//! TLS for `https://` OTLP endpoints (feature `otlp-tls`): rustls with its default provider
//! (aws-lc-rs), trusting the system's root certificates, or, when a CA file is configured
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`), the certificates of that file alone, as the
//! OpenTelemetry SDKs do; with a client certificate and key
//! (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `..._CLIENT_KEY`) for collectors that ask for one
//! (mutual TLS).

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::transport::Failure;
use super::TlsFiles;

/// What a connection to one endpoint needs: the client configuration and the name the
/// server's certificate must carry.
pub(crate) struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// For the endpoint's `host` (a DNS name or an IP address), trusting the CA certificates of
    /// `files.ca` when given, else the system's, and presenting `files.client` when given.
    pub(crate) fn new(host: &str, files: &TlsFiles) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        match &files.ca {
            Some(path) => {
                for cert in certificates(path)? {
                    roots.add(cert).map_err(|e| file_error(path, &e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err(
                "no root certificates found on this system for the https:// OTLP \
                        endpoint: install them (Debian: ca-certificates) or name a CA file \
                        with OTEL_EXPORTER_OTLP_CERTIFICATE"
                    .to_owned(),
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("OTLP TLS: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &files.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("OTLP client certificate {}: {e}", cert.display()))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("OTLP endpoint host {host:?}: {e}"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The TLS session over `tcp`, the server's certificate checked.
    ///
    /// (The files are read when the exporter is built, not per connection.)
    pub(crate) async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Failure> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| {
                Failure::caused_by(format!("OTLP export: TLS with {:?}: {e}", self.name), &e)
            })
    }
}

/// Whether TLS itself failed somewhere in `e`'s chain of causes (a rustls error: a certificate
/// that does not verify, an alert from the other side, no protocol both support), rather
/// than the connection under it.
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
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, &e))?;
    if certs.is_empty() {
        return Err(file_error(path, &"no certificate"));
    }
    Ok(certs)
}

fn file_error(path: &Path, e: &dyn std::fmt::Display) -> String {
    format!("OTLP TLS file {}: {e}", path.display())
}
