//! `ferry up`: the whole system on one machine — the embedded store, a controller on SQLite,
//! two environments with three agents each (each driving its own nginx when nginx is
//! installed), demo backends in the registry, an example configuration, and a live rollout
//! table. Ctrl-C stops everything.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use ferry_agent::{AgentConfig, RunningAgent};
use ferry_controller::api::Rollout;
use ferry_controller::auth::{new_token, token_line, Role, Scope, Tokens};
use ferry_controller::keys::Keys;
use ferry_controller::roles::{self, Principals};
use ferry_controller::server::ControllerConfig;
use ferry_registry::{AnnounceConfig, Instance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Arguments of `ferry up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Working directory for the store, the database and each agent's nginx
    /// [default: a new temporary directory, removed on exit].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Port of the controller's API (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    /// Exit once every environment's rollout is complete (for scripts and CI).
    #[arg(long)]
    exit_when_complete: bool,
    /// Use this etcd cluster instead of starting the embedded store: comma-separated
    /// endpoints (e.g. the client URLs `ferry cluster status NAME -o json` lists).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A tiny HTTP backend answering with its name, standing in for a real service.
async fn demo_backend(name: String) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let body = format!("hello from {name}\n");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((port, task))
}

fn example(env: &str) -> String {
    format!(
        r#"{{"kind":"ingress","virtual_hosts":[{{"hostname":"shop.{env}.example","paths":[{{"path":"/","service":"shop","read_timeout_seconds":30}},{{"path":"/static","backends":["127.0.0.1:9"]}}]}}]}}"#
    )
}

impl UpArgs {
    /// Runs the demo until Ctrl-C (or until complete with --exit-when-complete).
    pub async fn run(self) -> anyhow::Result<()> {
        if !self.endpoints.is_empty() {
            ferry_client::ConnectConfig::new(self.endpoints.clone())
                .validate()
                .map_err(|e| anyhow::anyhow!("--endpoints: {e}"))?;
        }
        // Removed when this returns, after everything that used it has stopped: nothing in it
        // outlives the run (the next run makes a new one).
        let scratch;
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                scratch = tempfile::Builder::new()
                    .prefix("ferry-up-")
                    .tempdir()
                    .context("creating a temporary working directory")?;
                scratch.path().to_path_buf()
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let nginx = nginx_binary();

        let (store, endpoints) = if self.endpoints.is_empty() {
            let mut store_config = ferry_store::StoreConfig::new(dir.join("store"));
            store_config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
            let store = ferry_store::start_on_own_runtime(store_config)
                .await
                .context("starting the store")?;
            let endpoint = store.local_addrs[0].to_string();
            (Some(store), vec![endpoint])
        } else {
            (None, self.endpoints.clone())
        };
        let connect_config = ferry_client::ConnectConfig::new(endpoints.clone());
        let endpoint = endpoints.join(",");
        let client = ferry_client::connect(&connect_config).await?;
        // On the embedded store every component signs in as its own least-privilege user.
        let credentials = if store.is_some() {
            let principals = Principals {
                controllers: vec!["controller-1".into()],
                agents: ["staging", "production"]
                    .iter()
                    .flat_map(|env| {
                        (1..=3).map(move |n| (env.to_string(), format!("{env}-agent-{n}")))
                    })
                    .collect(),
                announcers: (1..=3)
                    .map(|i| ("shop".to_string(), format!("shop-{i}")))
                    .collect(),
            };
            let layout = roles::layout(&Keys::default(), "/services", &principals)
                .map_err(|e| anyhow!("{e}"))?;
            let dir = dir.join("credentials");
            let passwords = super::store_auth::bootstrap_into(&mut client.clone(), &layout, &dir)
                .await
                .context("creating the components' users")?;
            Some((dir, passwords))
        } else {
            None
        };
        let client_as = |user: String| {
            let shared = client.clone();
            let mut config = connect_config.clone();
            let password = credentials
                .as_ref()
                .and_then(|(_, p)| p.get(&user).cloned());
            async move {
                match password {
                    Some(password) => {
                        config.credentials = Some((user.clone(), password));
                        ferry_client::connect(&config)
                            .await
                            .with_context(|| format!("signing in as {user}"))
                    }
                    None => Ok(shared),
                }
            }
        };

        // An admin token for changes and a read-only one to look around with (the
        // dashboard shows it no write controls).
        let token = new_token();
        let viewer_token = new_token();
        let tokens = Tokens::parse(&format!(
            "{}\n{}\n",
            token_line("admin", Role::Admin, &Scope::All, &token),
            token_line("viewer", Role::Read, &Scope::All, &viewer_token)
        ))
        .context("building the demo's tokens")?;
        let controller = ferry_controller::server::start(
            client_as(roles::controller_user("controller-1")).await?,
            ControllerConfig {
                name: "controller-1".into(),
                database: format!("sqlite://{}", dir.join("controller.db").display()),
                listen: format!("127.0.0.1:{}", self.api_port).parse()?,
                root: "/ingress".into(),
                tokens,
                tokens_file: None,
                audit_log: None,
                tls: None,
                reconcile_interval: Duration::from_secs(30),
                preflight: Default::default(),
            },
        )
        .await
        .context("starting the controller")?;
        let api = controller.local_addr.to_string();
        let api_client = ferry_controller::http_client::ApiClient::new(&api, &Default::default())?;

        let mut backends = Vec::new();
        let mut announcements = Vec::new();
        for i in 1..=3 {
            let name = format!("shop-{i}");
            let (port, task) = demo_backend(name.clone()).await?;
            let fast = AnnounceConfig::default();
            announcements.push(
                ferry_registry::announce(
                    client_as(roles::announcer_user("shop", &name)).await?,
                    fast,
                    Instance::new("shop", &name, format!("127.0.0.1:{port}")),
                )
                .await?,
            );
            backends.push(task);
        }

        let mut agents: Vec<(RunningAgent, PathBuf, u16)> = Vec::new();
        // An HTTP and a TLS port for each of the six agents.
        let mut ports = ferry_client::free_loopback_ports(12)?.into_iter();
        for env in ["staging", "production"] {
            for n in 1..=3 {
                let name = format!("{env}-agent-{n}");
                let prefix = dir.join("agents").join(&name);
                let (Some(port), Some(tls_port)) = (ports.next(), ports.next()) else {
                    anyhow::bail!("no free port left for agent {name}");
                };
                let (check_cmd, reload_cmd) = match &nginx {
                    Some(bin) => (
                        Some(format!("{} -t -q -p {p} -c {{{{.src}}}}", bin.display(), p = prefix.display())),
                        Some(format!(
                            "{b} -s reload -p {p} -c {p}/conf/nginx.conf 2>/dev/null || {b} -p {p} -c {p}/conf/nginx.conf",
                            b = bin.display(),
                            p = prefix.display()
                        )),
                    ),
                    None => (None, None),
                };
                let agent = ferry_agent::start(
                    client_as(roles::agent_user(env, &name)).await?,
                    AgentConfig {
                        env: env.into(),
                        name,
                        ip: "127.0.0.1".into(),
                        root: "/ingress".into(),
                        services_prefix: "/services".into(),
                        nginx_prefix: prefix.clone(),
                        listen: format!("127.0.0.1:{port}"),
                        tls_listen: format!("127.0.0.1:{tls_port}"),
                        template: None,
                        check_cmd,
                        reload_cmd,
                        resync: Duration::from_secs(180),
                    },
                )
                .await?;
                agents.push((agent, prefix, port));
            }
        }

        let mut ids = Vec::new();
        for env in ["staging", "production"] {
            let (status, body) = super::config::request(
                &api_client,
                "POST",
                &format!("/api/v1/environments/{env}/configs"),
                &token,
                &example(env),
            )
            .await?;
            if status != 201 {
                return Err(anyhow!(
                    "creating the example configuration failed ({status}): {body}"
                ));
            }
            let created: serde_json::Value = serde_json::from_str(&body)?;
            ids.push((env, created["id"].as_str().unwrap_or_default().to_string()));
        }

        let kept = if self.dir.is_some() {
            ""
        } else {
            ", removed on exit: --dir keeps it"
        };
        println!("ferry is up (data in {}{kept}).", dir.display());
        match &credentials {
            Some((dir, _)) => {
                println!("  store (etcd v3 API):  {endpoint}        authentication on; each component has its own user");
                println!(
                    "  root:                 ETCDCTL_API=3 etcdctl --endpoints={endpoint} --user=root:$(cat {}) get /ingress --prefix --keys-only",
                    dir.join("root").display()
                );
            }
            None => println!("  store (etcd v3 API):  {endpoint}        ETCDCTL_API=3 etcdctl --endpoints={endpoint} get /ingress --prefix --keys-only"),
        }
        println!("  controller API:       http://{api}   (OpenAPI: http://{api}/openapi.json)");
        println!("  admin token:          {token}");
        println!("  read-only token:      {viewer_token}");
        println!("  dashboard:            http://{api}/ui/   (sign in with a token above)");
        match &nginx {
            Some(_) => {
                for (agent_prefix, port) in agents.iter().map(|(_, p, port)| (p, port)).take(1) {
                    println!("  nginx (staging-agent-1): curl -H 'Host: shop.staging.example' http://127.0.0.1:{port}/   (conf: {})", agent_prefix.join("conf/nginx.conf").display());
                }
            }
            None => println!("  nginx is not installed: agents render their configuration files only (apt-get install nginx-light)"),
        }
        println!();

        let started = Instant::now();
        let signal = super::shutdown_signal();
        tokio::pin!(signal);
        let mut shown = String::new();
        let outcome = loop {
            let mut table = String::from("ENVIRONMENT  CONFIGURATION                         VERSION  LIVE  APPLIED  FAILED  PENDING  COMPLETE\n");
            let mut all_complete = true;
            for (env, id) in &ids {
                let (status, body) = super::config::request(
                    &api_client,
                    "GET",
                    &format!("/api/v1/environments/{env}/configs/{id}/status"),
                    &token,
                    "",
                )
                .await?;
                match serde_json::from_str::<Rollout>(&body) {
                    Ok(r) if status == 200 => {
                        all_complete &= r.summary.complete;
                        table.push_str(&format!(
                            "{env:<12} {id:<37} {:>7} {:>5} {:>8} {:>7} {:>8}  {}\n",
                            r.version,
                            r.summary.live,
                            r.summary.applied,
                            r.summary.failed,
                            r.summary.pending,
                            r.summary.complete
                        ));
                    }
                    _ => {
                        all_complete = false;
                        table.push_str(&format!(
                            "{env:<12} {id:<37} status unavailable ({status})\n"
                        ));
                    }
                }
            }
            if table != shown {
                println!("{table}");
                shown = table;
            }
            if all_complete && self.exit_when_complete {
                println!(
                    "rollout complete in every environment after {:?}",
                    started.elapsed()
                );
                break Ok(());
            }
            if self.exit_when_complete && started.elapsed() > Duration::from_secs(90) {
                break Err(anyhow!("rollout did not complete within 90 s"));
            }
            tokio::select! {
                _ = &mut signal => break Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };

        for (agent, prefix, _) in agents {
            agent.stop().await;
            if let Some(bin) = &nginx {
                let _ = tokio::process::Command::new(bin)
                    .arg("-s")
                    .arg("quit")
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(prefix.join("conf/nginx.conf"))
                    .output()
                    .await;
            }
        }
        for a in announcements {
            let _ = a.stop().await;
        }
        for b in backends {
            b.abort();
        }
        controller.stop().await;
        if let Some(store) = store {
            store.shutdown().await?;
        }
        outcome
    }
}
