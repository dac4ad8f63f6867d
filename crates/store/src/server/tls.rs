//! TLS on the client listeners, done here rather than by tonic so that the port offers both
//! `h2` and `http/1.1` in ALPN, as etcd's does: gRPC clients and HTTP/1.1 clients of the
//! JSON gateway (`curl --http1.1`, Python's `requests`) share one https port.

use std::path::PathBuf;
use std::time::Duration;

use ferry_client::tls::{server_acceptor, ServerTlsFiles};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::StoreError;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The TLS connections of `listener`. Each handshake runs on its own task, so a slow or
/// silent client holds up no one; the accept loop ends when the server stops listening.
pub(crate) fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a client connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Small answers leave at once instead of waiting for a delayed ACK.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
