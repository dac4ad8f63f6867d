//! TLS from PEM files for ferry's own servers and HTTP clients (rustls on the ring provider
//! everywhere): the store's client port, the controller's API, and the API's clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// PEM files of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA whose client certificates are checked (mutual TLS), if any.
    pub client_ca: Option<PathBuf>,
    /// With a `client_ca`: clients without a certificate are let in too (a certificate that
    /// is presented must still verify), as etcd does with `--trusted-ca-file` but without
    /// `--client-cert-auth`.
    pub client_cert_optional: bool,
}

/// PEM files of an API client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA that signed the API's certificate (the system has no trust store here).
    pub ca: Option<PathBuf>,
    /// Client certificate, for an API that requires one.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
}

/// Why TLS could not be set up; each names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("TLS setup: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn roots(what: &'static str, path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(what, path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The acceptor for a server's listener, offering the `alpn` protocols (`h2`, `http/1.1`).
pub fn server_acceptor(
    files: &ServerTlsFiles,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let certs = certificates("certificate", &files.cert)?;
    let key = private_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("client CA", ca)?),
                provider(),
            );
            let verifier = if files.client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            }
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A connector for an API client, verifying the server as `host`.
pub fn client_connector(
    files: &ClientTlsFiles,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), TlsError> {
    let roots = match &files.ca {
        Some(ca) => roots("CA", ca)?,
        None => {
            return Err(TlsError::Config(
                "an https API needs the CA that signed its certificate (--api-cacert)".into(),
            ))
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates("certificate", cert)?, private_key(key)?)
            .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "a client certificate and its key go together: give both or neither".into(),
            ))
        }
    };
    // What this client speaks, declared as browsers and curl do; a server that offers
    // only `h2` must refuse rather than get HTTP/1.1 it cannot parse.
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("server name {host:?}: {e}")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}
