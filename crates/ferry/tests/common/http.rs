//! Plain HTTP backends and GET requests (optionally over TLS) for tests that put nginx in
//! front of something.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An HTTP backend on a free loopback port answering every request with its name.
pub async fn backend(name: String) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((port, task))
}

/// `GET /` on 127.0.0.1:`port` with `Host: host`; the whole answer, headers included.
pub async fn get_raw(port: u16, host: &str) -> anyhow::Result<String> {
    raw_exchange(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await?,
        host,
    )
    .await
}

async fn raw_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    host: &str,
) -> anyhow::Result<String> {
    sock.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    // nginx may close a TLS connection without close_notify: keep what arrived.
    let _ = sock.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    host: &str,
) -> anyhow::Result<String> {
    let out = raw_exchange(sock, host).await?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "nginx answered: {out:?}");
    Ok(out
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `GET /` on 127.0.0.1:`port` with `Host: host`; the body of a 200 answer.
pub async fn get(port: u16, host: &str) -> anyhow::Result<String> {
    exchange(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await?,
        host,
    )
    .await
}

/// `GET /` over TLS on 127.0.0.1:`port`, sending `host` as SNI and verifying the server's
/// certificate against the CA in `ca_pem`.
pub async fn get_tls(port: u16, host: &str, ca_pem: &Path) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    exchange(tls, host).await
}
