//! A gRPC channel to one endpoint, built as [`crate::connect`] builds its connections (TLS,
//! skipped verification, keep-alive), for callers that speak to the etcd API below
//! etcd-client (a benchmark reading watch responses without decoding every field).

use crate::{ConnectConfig, ConnectError};

/// A channel to `endpoint` (`host:port` or a URL) with `config`'s TLS and keep-alive; it
/// connects on first use. Credentials are not attached: authenticate separately and send
/// the token as the `token` metadata.
pub fn grpc_channel(
    config: &ConnectConfig,
    endpoint: &str,
) -> Result<etcd_client::Channel, ConnectError> {
    let insecure = config.tls.as_ref().is_some_and(|t| t.insecure_skip_verify);
    if let (Some(files), true) = (&config.tls, insecure) {
        return crate::insecure::channel(endpoint, files, config);
    }
    let address = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let tls = config.tls.is_some() || endpoint.starts_with("https://");
    let url = format!("{}://{address}", if tls { "https" } else { "http" });
    let unreachable = |reason: String| ConnectError::Unreachable {
        endpoints: endpoint.to_string(),
        reason,
    };
    if !tls {
        // The channel `connect` gives a client of one plain endpoint (see `plain_channel`).
        let channel = crate::plain_channel::PlainChannel::new(
            crate::plain_channel::PlainEndpoint::new(address.to_string(), config),
        )
        .map_err(|e| unreachable(e.to_string()))?;
        return Ok(channel.into_etcd_channel());
    }
    let mut built = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(config.dial_timeout)
        .http2_keep_alive_interval(config.keepalive_time)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(false);
    if tls {
        let options = crate::tls_options(&config.tls.clone().unwrap_or_default())?;
        built = built.tls_config(options).map_err(|e| ConnectError::Tls {
            endpoints: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(etcd_client::Channel::Tonic(built.connect_lazy()))
}
