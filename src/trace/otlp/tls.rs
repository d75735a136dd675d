//! TLS for `https://` OTLP endpoints (feature `otlp-tls`): rustls with its default provider
//! (aws-lc-rs), trusting the system's root certificates, or, when a CA file is configured
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`), the certificates of that file alone, as the
//! OpenTelemetry SDKs do; with a client certificate and key
//! (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `..._CLIENT_KEY`) for collectors that ask for one
//! (mutual TLS).

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::transport::Failure;
use super::TlsFiles;
use crate::tls::ConfigError;

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
        let client = files
            .client
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let mut config =
            crate::tls::client_config(files.ca.as_deref(), client).map_err(|e| match e {
                ConfigError::NoRoots => "no root certificates found on this system for the \
                                         https:// OTLP endpoint: install them (Debian: \
                                         ca-certificates) or name a CA file with \
                                         OTEL_EXPORTER_OTLP_CERTIFICATE"
                    .to_owned(),
                ConfigError::Other(e) => format!("OTLP {e}"),
            })?;
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
