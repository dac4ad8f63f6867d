//! TLS settings of the client listeners, built here rather than by tonic so that the port
//! offers both `h2` and `http/1.1` in ALPN, as etcd's does: gRPC clients and HTTP/1.1
//! clients of the JSON gateway (`curl --http1.1`, Python's `requests`) share one https port.
//! The handshakes run in `connection.rs`, each on its connection's task.

use std::path::PathBuf;

use ferry_client::tls::{server_acceptor, ServerTlsFiles};
use tokio_rustls::TlsAcceptor;

use crate::error::StoreError;

/// TLS settings of the client listeners (etcd's `--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The server certificate (PEM).
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
    /// CA that client certificates must be signed by.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by the trusted CA.
    pub client_cert_auth: bool,
}

impl ServerTls {
    /// Reads the PEM files into an acceptor; each error names the flag and file.
    pub(crate) fn load(&self) -> Result<TlsAcceptor, StoreError> {
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(StoreError::InvalidUrl {
                url: "--client-cert-auth".into(),
                reason: "needs --trusted-ca-file to check client certificates against".into(),
            });
        }
        let files = ServerTlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            client_ca: self.trusted_ca_file.clone(),
            client_cert_optional: !self.client_cert_auth,
        };
        server_acceptor(&files, &[b"h2", b"http/1.1"])
            .map_err(|e| StoreError::Backend(format!("TLS configuration: {e}")))
    }
}
