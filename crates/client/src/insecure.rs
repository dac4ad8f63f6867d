//! `--insecure-skip-tls-verify`: TLS that encrypts but does not check the server's
//! certificate, as etcdctl's flag of the same name. tonic's TLS settings cannot turn
//! verification off, so this builds the channel with its own rustls connector.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{ConnectError, TlsFiles};

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls {
            endpoints: String::new(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)));
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let bad =
                |what: &'static str, path: &std::path::Path, e: String| ConnectError::TlsFile {
                    what,
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("certificate", cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("certificate", cert, e.to_string()))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad("key", key, e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ConnectError::CertWithoutKey),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A channel to `endpoint` (`host:port`) over TLS without certificate verification.
pub fn channel(
    endpoint: &str,
    files: &TlsFiles,
    config: &crate::ConnectConfig,
) -> Result<etcd_client::Channel, ConnectError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(files)?));
    let hostport = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string();
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&hostport)
        .to_string();
    let connect = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        let hostport = hostport.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&hostport).await?;
            let name =
                ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    // The scheme is http because TLS is done by the connector above.
    let uri = format!(
        "http://{}",
        endpoint
            .trim_start_matches("https://")
            .trim_start_matches("http://")
    );
    let endpoint = tonic::transport::Endpoint::from_shared(uri.clone()).map_err(|e| {
        ConnectError::Unreachable {
            endpoints: uri.clone(),
            reason: e.to_string(),
        }
    })?;
    let channel = endpoint
        .connect_timeout(config.dial_timeout)
        .http2_keep_alive_interval(config.keepalive_time)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(false)
        .connect_with_connector_lazy(connect);
    Ok(etcd_client::Channel::Tonic(channel))
}
