//! Starts real servers for ferry's tests: a real etcd 3.4 from Debian's `etcd-server`
//! package, or `ferry store`, each on free loopback ports in its own temp dir.
//!
//! A server is killed when its handle drops. A missing `etcd` binary is an error that says
//! how to install it: tests never skip themselves.

#![warn(missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::Client;

pub use ferry_client::TlsFiles;

pub mod cluster;
mod cpu;
mod metrics;
pub mod s3;
pub mod sql;

pub use cluster::EtcdCluster;
pub use cpu::process_cpu;
pub use metrics::metric_value;

/// Which implementation of the etcd v3 API a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ferry's embedded store (`ferry store`).
    Ferry,
    /// A real etcd.
    Etcd,
}

/// A running server.
pub struct Server {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    program: PathBuf,
    /// Client TLS settings when the server listens on https.
    tls: Option<ferry_client::TlsFiles>,
}

/// Sends `signal` (`-STOP`, `-CONT`, …) to process `pid`, a server this kit started.
pub(crate) fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// Waits until every thread of `pid` is stopped: `kill` returns once the signal is sent, and
/// a thread that was running may still answer a request before it takes the stop.
pub(crate) fn wait_until_stopped(pid: u32) -> anyhow::Result<()> {
    let stopped = || -> Option<bool> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut all = true;
        for task in tasks {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            all &= matches!(state, 'T' | 't');
        }
        Some(all)
    };
    let until = Instant::now() + Duration::from_secs(5);
    while stopped() != Some(true) {
        anyhow::ensure!(
            Instant::now() < until,
            "process {pid} did not stop within 5 s of SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Picks a free loopback port (the kernel's choice for port 0).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `n` different free loopback ports (see [`ferry_client::free_loopback_ports`]).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    ferry_client::free_loopback_ports(n).context("binding free ports")
}

/// The `etcd` binary, or an error saying how to install it.
pub fn etcd_binary() -> anyhow::Result<PathBuf> {
    find_in_path("etcd").ok_or_else(|| {
        anyhow!("the real etcd server is needed for this test but `etcd` is not on PATH: install it with `apt-get install etcd-server etcd-client` (or run scripts/install-deps.sh)")
    })
}

/// The `etcdctl` binary, or an error saying how to install it.
pub fn etcdctl_binary() -> anyhow::Result<PathBuf> {
    find_in_path("etcdctl").ok_or_else(|| {
        anyhow!("`etcdctl` is needed for this test but is not on PATH: install it with `apt-get install etcd-client` (or run scripts/install-deps.sh)")
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Server {
    /// Starts `kind` with extra flags (etcd's flag names work for both).
    pub async fn start(kind: Kind, ferry_bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(kind, ferry_bin, extra, None).await
    }

    /// Starts `kind` listening on `https://`, with `extra` carrying the server's TLS flags
    /// (`--cert-file`, `--key-file`, …); `client` is what readiness checks connect with.
    pub async fn start_tls(
        kind: Kind,
        ferry_bin: &Path,
        extra: &[&str],
        client: ferry_client::TlsFiles,
    ) -> anyhow::Result<Self> {
        Self::start_with(kind, ferry_bin, extra, Some(client)).await
    }

    async fn start_with(
        kind: Kind,
        ferry_bin: &Path,
        extra: &[&str],
        tls: Option<ferry_client::TlsFiles>,
    ) -> anyhow::Result<Self> {
        // A free port can be taken by another test between picking it and binding it; a
        // server that exits during start-up is tried again on new ports.
        let mut last_error = None;
        for _ in 0..3 {
            let tmp = tempfile::tempdir().context("creating a temp dir")?;
            let data_dir = tmp.path().join("data");
            let mut server = Self::prepare(kind, ferry_bin, &data_dir, extra, tls.is_some())?;
            server.tls = tls.clone();
            server._tmp = Some(tmp);
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) if e.to_string().contains("exited during start-up") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("server did not start")))
    }

    /// Starts a ferry store on an existing data dir (for restore tests).
    pub async fn ferry_on(
        ferry_bin: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::on(Kind::Ferry, ferry_bin, data_dir, extra).await
    }

    /// Starts `kind` on an existing data dir (a restored snapshot), as member `default`.
    pub async fn on(
        kind: Kind,
        ferry_bin: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut server = Self::prepare(kind, ferry_bin, data_dir, extra, false)?;
        server.spawn().await?;
        Ok(server)
    }

    fn prepare(
        kind: Kind,
        ferry_bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        https: bool,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let scheme = if https { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{port}");
        let mut args: Vec<String> = Vec::new();
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let program = match kind {
            Kind::Ferry => {
                args.extend([
                    "store".to_string(),
                    "--initial-advertise-peer-urls".into(),
                    peer,
                ]);
                ferry_bin.to_path_buf()
            }
            Kind::Etcd => {
                args.extend([
                    "--listen-peer-urls".to_string(),
                    peer.clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer.clone(),
                    "--initial-cluster".into(),
                    format!("default={peer}"),
                    "--log-level".into(),
                    "error".into(),
                    "--logger".into(),
                    "zap".into(),
                ]);
                etcd_binary()?
            }
        };
        args.extend([
            "--name".to_string(),
            "default".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(Self {
            kind,
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            args,
            program,
            tls: None,
        })
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("FERRY_LOG", "warn")
            .env_remove("ETCD_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("{:?} server exited during start-up: {status}", self.kind);
                }
            }
            if self.connect().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{:?} server did not become ready within 20 s", self.kind);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Which implementation this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `127.0.0.1:PORT`, as etcd clients take it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A connected client (over TLS when the server listens on https).
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.connect().await.context("connecting to the server")
    }

    /// The connection settings a client of this server needs.
    pub fn connect_config(&self) -> ferry_client::ConnectConfig {
        let mut config = ferry_client::ConnectConfig::new([self.endpoint()]);
        config.tls = self.tls.clone();
        config
    }

    async fn connect(&self) -> Result<Client, ferry_client::ConnectError> {
        ferry_client::connect(&self.connect_config()).await
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SIGSTOP`: the server keeps its connections open and answers nothing on them, as a
    /// machine cut off by a partition or frozen would.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")?;
        let pid = self.pid().ok_or_else(|| anyhow!("server is not running"))?;
        wait_until_stopped(pid)
    }

    /// `SIGCONT` after [`Server::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("server is not running"))?;
        send_signal(pid, signal)
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("server did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data dir and port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
