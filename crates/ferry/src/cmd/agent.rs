//! `ferry agent`: applies one environment's configurations to nginx and reports back.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use ferry_agent::{start, AgentConfig};

use ferry_client::ConnectionArgs;

/// Arguments of `ferry agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Environment this agent serves.
    #[arg(long)]
    env: String,
    /// Agent name, unique in its environment.
    #[arg(long)]
    name: String,
    /// Address reported in the registry.
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Root prefix of ferry's keys.
    #[arg(long, default_value = "/ingress")]
    root: String,
    /// Registry prefix of the services configurations route to.
    #[arg(long, default_value = "/services")]
    services_prefix: String,
    /// nginx prefix directory (the configuration is PREFIX/conf/nginx.conf).
    #[arg(long)]
    nginx_prefix: PathBuf,
    /// Address the rendered virtual hosts listen on for HTTP.
    #[arg(long, default_value = "0.0.0.0:80")]
    listen: String,
    /// Address virtual hosts with TLS listen on for HTTPS.
    #[arg(long, default_value = "0.0.0.0:443")]
    tls_listen: String,
    /// A confd-style template instead of the built-in one.
    #[arg(long)]
    template: Option<PathBuf>,
    /// Command checking the staged configuration; {{.src}} is its path.
    #[arg(long)]
    check_cmd: Option<String>,
    /// Command reloading nginx after a change.
    #[arg(long)]
    reload_cmd: Option<String>,
    /// Serve Prometheus metrics (`ferry_agent_*`: what it refused to render) on this address.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Full resynchronisation period.
    #[arg(long, default_value = "3m", value_parser = ferry_client::args::positive_duration)]
    resync: std::time::Duration,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl AgentArgs {
    /// Runs until SIGINT/SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        check_listen("--listen", &self.listen)?;
        check_listen("--tls-listen", &self.tls_listen)?;
        let config = AgentConfig {
            env: self.env,
            name: self.name,
            ip: self.ip,
            root: self.root,
            services_prefix: self.services_prefix,
            nginx_prefix: self.nginx_prefix,
            listen: self.listen,
            tls_listen: self.tls_listen,
            template: self.template,
            check_cmd: self.check_cmd,
            reload_cmd: self.reload_cmd,
            resync: self.resync,
        };
        // Everything that no retry can fix is refused now, before waiting for the store.
        config.validate()?;
        let connect_config = self.connection.config()?;
        // Serve the last good configuration first: it is on disk, and nginx may need starting
        // (after a reboot) even while the store is unreachable.
        let conf = config.nginx_prefix.join("conf/nginx.conf");
        if let (true, Some(reload)) = (conf.exists(), &config.reload_cmd) {
            match tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(reload)
                .status()
                .await
            {
                Ok(s) if s.success() => {
                    tracing::info!(conf = %conf.display(), "serving the last good configuration")
                }
                Ok(s) => {
                    tracing::warn!(status = %s, "reload_cmd failed for the last good configuration")
                }
                Err(e) => tracing::warn!(error = %e, "reload_cmd could not start"),
            }
        }
        // Wait for the store rather than give up: nginx keeps serving meanwhile.
        let mut delay = std::time::Duration::from_millis(200);
        let client = loop {
            match ferry_client::connect(&connect_config).await {
                Ok(c) => break c,
                Err(e @ ferry_client::ConnectError::Unreachable { .. }) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "store unreachable; keeping the last good configuration");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = super::shutdown_signal() => return Ok(()),
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e).context("connecting to the store"),
            }
        };
        tracing::info!("connected to the store");
        let agent = start(client, config).await.context("starting the agent")?;
        if let Some(addr) = self.metrics_addr {
            let metrics = agent.metrics();
            super::serve_metrics("--metrics-addr", addr, move || metrics.encode()).await?;
        }
        super::shutdown_signal().await;
        agent.stop().await;
        Ok(())
    }
}

/// nginx `listen` takes `port`, `host:port` or `[v6]:port`; anything else would only fail later,
/// at `nginx -t`, for every configuration.
fn check_listen(flag: &str, value: &str) -> anyhow::Result<()> {
    let port = value.rsplit_once(':').map_or(value, |(host, port)| {
        if host.is_empty() || host.contains(char::is_whitespace) {
            ""
        } else {
            port
        }
    });
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(anyhow!(
            "{flag} {value:?}: expected PORT, HOST:PORT or [IPV6]:PORT with a port from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_listen;

    #[test]
    fn listen_addresses() {
        for ok in [
            "80",
            "0.0.0.0:80",
            "127.0.0.1:8443",
            "[::]:443",
            "edge.local:8080",
        ] {
            assert!(check_listen("--listen", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "0",
            "http",
            "0.0.0.0:",
            ":80",
            "1.2.3.4:70000",
            "a b:80",
        ] {
            let err = check_listen("--listen", bad).map(|_| ()).unwrap_err();
            assert!(err.to_string().starts_with("--listen"), "{bad}: {err}");
        }
    }
}
