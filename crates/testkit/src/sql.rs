//! Real SQL servers for tests: MariaDB and PostgreSQL from Debian's packages, each started on
//! a free loopback port in its own temp dir (never the system service), stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::free_port;

/// A running SQL server.
pub struct SqlServer {
    child: Option<Child>,
    /// PostgreSQL's postmaster.pid: the server runs under runuser, so it is stopped by pid.
    pid_file: Option<PathBuf>,
    /// The sqlx URL of a database on it.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        if let Some(pid) = self
            .pid_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            // SIGQUIT: PostgreSQL's immediate shutdown, which also ends its backends.
            let _ = Command::new("kill").args(["-QUIT", pid.trim()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn uid_of(user: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn wait_tcp(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up: {status}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{what} did not listen on port {port} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl SqlServer {
    /// MariaDB with a database `ferry` (needs `apt-get install mariadb-server`).
    pub fn mariadb() -> anyhow::Result<Self> {
        let install = ["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("MariaDB is needed for this test: install it with `apt-get install mariadb-server` (or run scripts/install-deps.sh)"))?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .context("running mariadb-install-db")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = free_port()?;
        let socket = dir.path().join("mysqld.sock");
        let mut child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mysqld.pid").display()
            ))
            .args([
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-grant-tables",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mariadbd")?;
        wait_tcp(port, &mut child, "mariadbd")?;
        let out = Command::new("/usr/bin/mariadb")
            .args([
                "--protocol=TCP",
                "-h",
                "127.0.0.1",
                "-P",
                &port.to_string(),
                "-u",
                "root",
                "-e",
                "CREATE DATABASE ferry",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "creating the database failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            child: Some(child),
            pid_file: None,
            url: format!("mysql://root@127.0.0.1:{port}/ferry"),
            _dir: dir,
        })
    }

    /// PostgreSQL with a trusted user `ferry` (needs `apt-get install postgresql`).
    pub fn postgres() -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).find(|p| p.join("initdb").exists()))
            .ok_or_else(|| anyhow!("PostgreSQL is needed for this test: install it with `apt-get install postgresql` (or run scripts/install-deps.sh)"))?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        // PostgreSQL refuses to run as root: run it as the postgres user, which owns the dir.
        let run_as = if is_root() {
            let (uid, gid) = uid_of("postgres")
                .ok_or_else(|| anyhow!("no postgres user to run PostgreSQL as"))?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            Some("postgres")
        } else {
            None
        };
        let command = |program: &Path| {
            let mut c = match run_as {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", user, "--"]).arg(program);
                    c
                }
                None => Command::new(program),
            };
            c.stdout(Stdio::null()).stderr(Stdio::piped());
            c
        };
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "ferry", "--auth=trust", "-E", "UTF8"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut child = command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        wait_tcp(port, &mut child, "postgres")?;
        Ok(Self {
            child: Some(child),
            pid_file: Some(data.join("postmaster.pid")),
            url: format!("postgres://ferry@127.0.0.1:{port}/postgres"),
            _dir: dir,
        })
    }
}
