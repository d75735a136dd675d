//! TLS for `https://` OTLP endpoints (feature `otlp-tls`): rustls with its default provider
//! (aws-lc-rs), trusting the system's root certificates, or, when a CA file is configured
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`), the certificates of that file alone, as the
//! OpenTelemetry SDKs do.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// What a connection to one endpoint needs: the client configuration and the name the
/// server's certificate must carry.
pub(crate) struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// For the endpoint's `host` (a DNS name or an IP address), trusting the CA certificates of
    /// `ca_file` (PEM) when given, else the system's.
    pub(crate) fn new(host: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let what = |e: &dyn std::fmt::Display| {
                    format!("OTLP certificate file {}: {e}", path.display())
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(&e))? {
                    roots
                        .add(cert.map_err(|e| what(&e))?)
                        .map_err(|e| what(&e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err(match ca_file {
                Some(path) => format!("OTLP certificate file {}: no certificate", path.display()),
                None => "no root certificates found on this system for the https:// OTLP \
                         endpoint: install them (Debian: ca-certificates) or name a CA file \
                         with OTEL_EXPORTER_OTLP_CERTIFICATE"
                    .to_owned(),
            });
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("OTLP TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("OTLP endpoint host {host:?}: {e}"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The TLS session over `tcp`, the server's certificate checked.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("OTLP export: TLS with {:?}: {e}", self.name))
    }
}
