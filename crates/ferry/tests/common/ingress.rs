//! The ingress system as separate processes for end-to-end tests: `ferry controller`
//! replicas on one SQL database, `ferry agent`s checking with the real `nginx -t`, and the
//! REST API as a user drives it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_controller::api::Rollout;

use super::ferry_bin;

/// The admin token every controller started here accepts.
pub const ADMIN: &str = "admin-token-0123456789abcdef";

/// A token file line (`name:role:envs:sha256`).
pub fn token_line(name: &str, role: &str, envs: &str, token: &str) -> String {
    format!(
        "{name}:{role}:{envs}:{}",
        ferry_controller::auth::hash_token(token)
    )
}

/// The token file holding [`ADMIN`] as `admin`, for every environment.
pub fn admin_tokens() -> String {
    token_line("admin", "admin", "*", ADMIN) + "\n"
}

/// A child process stopped when dropped: SIGTERM, so that it removes what it made (a
/// controller's pre-flight work directory), then SIGKILL if it is still there after a grace
/// period.
pub struct Proc(pub Child);

/// How long a dropped [`Proc`] has to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Proc {
    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already reaped: its PID may belong to someone else by now.
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.0.id().to_string();
        // CONT too: a paused process only acts on the TERM once it runs.
        for signal in ["-TERM", "-CONT"] {
            let _ = Command::new("kill")
                .args([signal, &pid])
                .stderr(Stdio::null())
                .status();
        }
        let until = Instant::now() + STOP_GRACE;
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

/// The nginx binary, or how to install it.
pub fn nginx_binary() -> anyhow::Result<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "nginx is needed: apt-get install nginx-light (or scripts/install-deps.sh)"
            )
        })
}

/// Stops the nginx an agent started under a prefix (`nginx -s stop`), when dropped.
pub struct StopNginx(pub &'static str, pub PathBuf);

impl Drop for StopNginx {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .arg("-s")
            .arg("stop")
            .arg("-p")
            .arg(&self.1)
            .arg("-c")
            .arg(self.1.join("conf/nginx.conf"))
            .output();
    }
}

/// One `ferry controller` replica.
pub struct Controller {
    /// Its API address.
    pub addr: String,
    args: Vec<String>,
    /// Its temporary directory (TMPDIR): the test's, so that a pre-flight work directory
    /// left by `kill -9` goes with the test's.
    tmp: PathBuf,
    proc: Proc,
}

impl Controller {
    /// Starts a replica named `name` on `database` and waits until its API answers.
    pub async fn start(
        endpoint: &str,
        database: &str,
        name: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with_tokens(endpoint, database, name, dir, &admin_tokens()).await
    }

    /// Starts replica "c1" on a SQLite database in `dir`.
    pub async fn on_sqlite(endpoint: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::start(endpoint, &sqlite_url(dir), "c1", dir).await
    }

    /// Starts a replica accepting the tokens in `tokens` (the token file's text).
    pub async fn start_with_tokens(
        endpoint: &str,
        database: &str,
        name: &str,
        dir: &Path,
        tokens_text: &str,
    ) -> anyhow::Result<Self> {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, tokens_text)?;
        let addr = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
        let args: Vec<String> = [
            "controller",
            "--endpoints",
            endpoint,
            "--listen",
            &addr,
            "--tokens",
            &tokens.display().to_string(),
            "--database",
            database,
            "--reconcile-interval",
            "1s",
            "--name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tmp = dir.to_path_buf();
        let proc = Proc(spawn(&args, &tmp)?);
        let c = Controller {
            addr,
            args,
            tmp,
            proc,
        };
        c.wait_ready().await?;
        Ok(c)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while call(&self.addr, "GET", "/healthz", None, "")
            .await
            .map(|r| r.0)
            .unwrap_or(0)
            != 200
        {
            anyhow::ensure!(
                Instant::now() < until,
                "controller {} did not come up",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again with the same flags (same name, address and database).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = Proc(spawn(&self.args, &self.tmp)?);
        self.wait_ready().await
    }
}

fn spawn(args: &[String], tmp: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(ferry_bin())
        .args(args)
        .env("FERRY_LOG", "warn")
        .env("TMPDIR", tmp)
        .stdout(Stdio::null())
        .spawn()?)
}

/// One `ferry agent` in environment `prod`, checking with `nginx -t` (and refusing any
/// configuration mentioning `refuse`, when set — a host-specific check that fails).
pub struct Agent {
    /// Its name.
    pub name: String,
    /// Its nginx prefix.
    pub prefix: PathBuf,
    args: Vec<String>,
    proc: Proc,
}

impl Agent {
    /// Starts an agent.
    pub fn start(
        endpoint: &str,
        name: &str,
        dir: &Path,
        refuse: Option<&str>,
    ) -> anyhow::Result<Self> {
        let nginx = nginx_binary()?;
        let prefix = dir.join(name);
        let mut check = format!("{nginx} -t -q -p {} -c {{{{.src}}}}", prefix.display());
        if let Some(word) = refuse {
            check.push_str(&format!(" && ! grep -q {word} {{{{.src}}}}"));
        }
        let args: Vec<String> = [
            "agent",
            "--endpoints",
            endpoint,
            "--env",
            "prod",
            "--name",
            name,
            "--nginx-prefix",
            &prefix.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{}", ferry_testkit::free_port()?),
            "--check-cmd",
            &check,
            "--dial-timeout",
            "500ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc(spawn(&args, dir)?);
        Ok(Agent {
            name: name.to_string(),
            prefix,
            args,
            proc,
        })
    }

    /// Whether its process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.0.try_wait(), Ok(None))
    }

    /// The nginx configuration it last installed.
    pub fn nginx_conf(&self) -> String {
        std::fs::read_to_string(self.prefix.join("conf/nginx.conf")).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to its process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.proc.0.id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Starts it again with the same flags.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let dir = self.prefix.parent().unwrap_or(&self.prefix);
        self.proc = Proc(spawn(&self.args, dir)?);
        Ok(())
    }
}

/// `n` agents named a1…an, none refusing anything.
pub fn agents(endpoint: &str, dir: &Path, n: usize) -> anyhow::Result<Vec<Agent>> {
    (1..=n)
        .map(|i| Agent::start(endpoint, &format!("a{i}"), dir, None))
        .collect()
}

/// A SQLite database in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("ctl.db").display())
}

/// One API call with the admin token: status code and JSON body (`null` if none).
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    if_match: Option<i64>,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let headers: Vec<(&str, String)> = if_match
        .map(|v| vec![("If-Match", format!("\"{v}\""))])
        .unwrap_or_default();
    let reply =
        ferry_controller::http_client::request(addr, method, path, Some(ADMIN), &headers, body)
            .await?;
    Ok((
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null),
    ))
}

/// The value of `ferry_controller_change_step_duration_seconds_<suffix>{step="<step>"}` in
/// a controller's `/metrics` text (`suffix` is `count` or `sum`).
pub fn change_step(metrics: &str, suffix: &str, step: &str) -> Option<f64> {
    let series =
        format!("ferry_controller_change_step_duration_seconds_{suffix}{{step=\"{step}\"}}");
    ferry_testkit::metric_value(metrics, &series)
}

/// The path of configuration `id` in `prod`.
pub fn config_path(id: &str) -> String {
    format!("/api/v1/environments/prod/configs/{id}")
}

/// Creates a configuration routing `host` to a static backend; its id.
pub async fn create(addr: &str, host: &str) -> anyhow::Result<String> {
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/environments/prod/configs",
        None,
        &document(host),
    )
    .await?;
    anyhow::ensure!(status == 201, "create {host}: {status} {body}");
    Ok(body["id"].as_str().unwrap_or_default().to_string())
}

/// A typed ingress document for `host`.
pub fn document(host: &str) -> String {
    serde_json::json!({
        "kind": "ingress",
        "virtual_hosts": [{"hostname": host, "paths": [{"path": "/", "backends": ["127.0.0.1:9"]}]}],
    })
    .to_string()
}

/// The rollout of `id` as the API reports it.
pub async fn rollout(addr: &str, id: &str) -> anyhow::Result<Rollout> {
    let (status, body) = call(
        addr,
        "GET",
        &format!("{}/status", config_path(id)),
        None,
        "",
    )
    .await?;
    anyhow::ensure!(status == 200, "status of {id}: {status} {body}");
    Ok(serde_json::from_value(body)?)
}

/// Waits until the rollout of `id` satisfies `done`; the last rollout seen is in the error.
pub async fn wait_rollout(
    addr: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&Rollout) -> bool,
) -> anyhow::Result<Rollout> {
    let until = Instant::now() + limit;
    loop {
        let last = rollout(addr, id).await;
        if let Ok(r) = &last {
            if done(r) {
                return last;
            }
        }
        anyhow::ensure!(
            Instant::now() < until,
            "rollout of {id} never got there; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `id` is complete at `version` with `agents` live agents.
pub async fn wait_complete(
    addr: &str,
    id: &str,
    version: i64,
    agents: usize,
) -> anyhow::Result<Rollout> {
    wait_rollout(addr, id, Duration::from_secs(30), |r| {
        r.version == version && r.summary.complete && r.summary.live == agents
    })
    .await
}

/// Waits until `n` agents of `prod` are registered (a rollout in waves takes the agents
/// live when it starts).
pub async fn wait_agents(addr: &str, n: usize) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, envs) = call(addr, "GET", "/api/v1/environments", None, "").await?;
        let live = envs
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["env"] == "prod")
            .and_then(|e| e["agents"].as_array().map(Vec::len))
            .unwrap_or(0);
        if live == n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "{live} of {n} agents registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
