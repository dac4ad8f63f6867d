//! A minimal HTTP/1.1 client for the controller's API (one request per connection, plain or
//! over TLS), used by `ferry config`, `ferry up` and the tests, so none of them needs an HTTP
//! client library.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use ferry_client::tls::{client_connector, ClientTlsFiles, TlsError};

/// Where the API is and how to reach it.
#[derive(Clone)]
pub struct ApiClient {
    addr: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// Why an API address is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ApiAddressError {
    /// Not `http(s)://host:port`.
    #[error("--api {api:?}: expected http://HOST:PORT or https://HOST:PORT: {reason}")]
    Malformed {
        /// The address given.
        api: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS files are unusable.
    #[error("--api {api:?}: {source}")]
    Tls {
        /// The address given.
        api: String,
        /// The TLS problem.
        #[source]
        source: TlsError,
    },
}

impl ApiClient {
    /// A client for `api` (`http://host:port`, `https://host:port` or `host:port`); an https
    /// API is verified against `tls.ca`, and `tls.cert`/`tls.key` are presented when given.
    pub fn new(api: &str, tls: &ClientTlsFiles) -> Result<Self, ApiAddressError> {
        let malformed = |reason: String| ApiAddressError::Malformed {
            api: api.to_string(),
            reason,
        };
        let (https, rest) = match api.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => return Err(malformed(format!("unknown scheme {scheme:?}"))),
            None => (false, api),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let host_port =
            ferry_client::HostPort::parse(rest).map_err(|e| malformed(e.to_string()))?;
        let tls = if https {
            Some(
                client_connector(tls, &host_port.host).map_err(|source| ApiAddressError::Tls {
                    api: api.to_string(),
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            addr: host_port.to_string(),
            tls,
        })
    }

    /// `host:port` of the API.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: &str,
    ) -> std::io::Result<HttpReply> {
        let sock = tokio::net::TcpStream::connect(&self.addr).await?;
        let raw = match &self.tls {
            None => exchange(sock, method, path, token, headers, body).await?,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), sock).await?;
                exchange(tls, method, path, token, headers, body).await?
            }
        };
        Ok(parse(&raw))
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code (0 if the answer had no status line).
    pub status: u16,
    /// The header block, lower-cased.
    pub headers: String,
    /// The body, de-chunked.
    pub body: String,
}

/// Sends one plain-HTTP request to `addr` (`host:port`, `http://` accepted) and reads the
/// whole answer.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<HttpReply> {
    let client = ApiClient::new(addr, &ClientTlsFiles::default())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    client.request(method, path, token, headers, body).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<Vec<u8>> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    sock.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify once the answer is complete: keep what came.
    if let Err(e) = sock.read_to_end(&mut raw).await {
        if raw.is_empty() {
            return Err(e);
        }
    }
    Ok(raw)
}

fn parse(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = head.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n).unwrap_or(tail));
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        rest.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}
