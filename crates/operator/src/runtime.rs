//! How members run: a small interface (start, stop, inspect, wipe) so that systemd units or
//! pods can be added later, and the local-process runtime: etcd processes on this host,
//! detached (their own process group, output to a log file in the member's directory) so that
//! killing the operator never stops a cluster; a pid file lets a restarted operator adopt
//! them.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;

use crate::records::MemberRecord;
use crate::spec::ClusterSpec;

/// How a member's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Running (possibly stopped by a signal: that is for health checks to find).
    Running(u32),
    /// Not running.
    Gone,
}

/// Why the runtime could not do something.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A path outside the cluster's data directory.
    #[error("refusing to touch {0}: not inside the cluster's data directory")]
    OutsideDataRoot(PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// How a member is started: new cluster or joining an existing one.
#[derive(Debug, Clone)]
pub struct Launch {
    /// `name=peerURL` of every member, this one included.
    pub initial_cluster: Vec<String>,
    /// `new` for a seed, `existing` for a member joining.
    pub state: &'static str,
    /// The cluster token (new clusters).
    pub token: String,
    /// Start with `--force-new-cluster`: the member keeps its data and drops every other
    /// member (quorum-loss recovery only).
    pub force_new_cluster: bool,
}

/// Runs members.
pub trait MemberRuntime: Send + Sync {
    /// Starts `member` (its data dir is created when missing).
    fn start(
        &self,
        spec: &ClusterSpec,
        member: &MemberRecord,
        launch: &Launch,
    ) -> Result<u32, RuntimeError>;
    /// Whether `member` runs.
    fn inspect(&self, spec: &ClusterSpec, member: &MemberRecord) -> ProcessState;
    /// Stops `member`: SIGTERM, then SIGKILL after `grace`.
    fn stop(&self, spec: &ClusterSpec, member: &MemberRecord, grace: Duration);
    /// Deletes `member`'s data, so that it can never rejoin.
    fn wipe(&self, spec: &ClusterSpec, member: &MemberRecord) -> Result<(), RuntimeError>;
    /// Where `member` keeps its etcd data (a restore writes it before the first start).
    fn data_dir(&self, spec: &ClusterSpec, member: &MemberRecord) -> PathBuf;
}

/// etcd processes on this host.
#[derive(Default)]
pub struct LocalProcesses {
    /// The processes this operator started, so they are reaped when they exit.
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProcesses {
    /// A runtime with no process yet.
    pub fn new() -> Self {
        Self {
            children: Mutex::new(HashMap::new()),
        }
    }

    /// A member's directory: `<data_root>/<cluster>/<member>`.
    pub fn member_dir(spec: &ClusterSpec, member: &MemberRecord) -> PathBuf {
        spec.cluster_dir().join(&member.name)
    }

    fn pid_file(spec: &ClusterSpec, member: &MemberRecord) -> PathBuf {
        Self::member_dir(spec, member).join("etcd.pid")
    }

    fn data_dir(spec: &ClusterSpec, member: &MemberRecord) -> PathBuf {
        Self::member_dir(spec, member).join("data")
    }

    /// Whether `pid` is an etcd running on this member's data dir (a pid from a pid file may
    /// have been reused by anything since).
    fn is_member_process(pid: u32, data_dir: &Path) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let wanted = format!("--data-dir={}", data_dir.display());
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == wanted.as_bytes())
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    }

    fn reap(&self, name: &str) {
        let mut children = self.children.lock();
        if let Some(child) = children.get_mut(name) {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                children.remove(name);
            }
        }
    }
}

impl MemberRuntime for LocalProcesses {
    fn start(
        &self,
        spec: &ClusterSpec,
        member: &MemberRecord,
        launch: &Launch,
    ) -> Result<u32, RuntimeError> {
        let dir = Self::member_dir(spec, member);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let log_path = dir.join("etcd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let err_log = log
            .try_clone()
            .map_err(io(format!("opening {}", log_path.display())))?;
        let data = Self::data_dir(spec, member);
        let child = Command::new(&spec.etcd.binary)
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", member.client_url()))
            .arg(format!("--advertise-client-urls={}", member.client_url()))
            .arg(format!("--listen-peer-urls={}", member.peer_url()))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                member.peer_url()
            ))
            .arg(format!(
                "--initial-cluster={}",
                launch.initial_cluster.join(",")
            ))
            .arg(format!("--initial-cluster-state={}", launch.state))
            .arg(format!("--initial-cluster-token={}", launch.token))
            .args(spec.tls_flags())
            .args(&spec.etcd.flags)
            .args(launch.force_new_cluster.then_some("--force-new-cluster"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Its own process group: a signal to the operator's group (Ctrl-C, a service
            // manager stopping the operator) does not reach the cluster.
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", spec.etcd.binary.display())))?;
        let pid = child.id();
        let pid_file = Self::pid_file(spec, member);
        std::fs::write(&pid_file, pid.to_string())
            .map_err(io(format!("writing {}", pid_file.display())))?;
        self.children.lock().insert(member.name.clone(), child);
        Ok(pid)
    }

    fn inspect(&self, spec: &ClusterSpec, member: &MemberRecord) -> ProcessState {
        self.reap(&member.name);
        let pid = std::fs::read_to_string(Self::pid_file(spec, member))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        match pid {
            Some(pid) if Self::is_member_process(pid, &Self::data_dir(spec, member)) => {
                ProcessState::Running(pid)
            }
            _ => ProcessState::Gone,
        }
    }

    fn stop(&self, spec: &ClusterSpec, member: &MemberRecord, grace: Duration) {
        let ProcessState::Running(pid) = self.inspect(spec, member) else {
            return;
        };
        let Ok(raw) = i32::try_from(pid) else {
            return;
        };
        let pid = Pid::from_raw(raw);
        // A stopped (paused) process must be continued to act on SIGTERM.
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if self.inspect(spec, member) == ProcessState::Gone {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && self.inspect(spec, member) != ProcessState::Gone {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn data_dir(&self, spec: &ClusterSpec, member: &MemberRecord) -> PathBuf {
        Self::data_dir(spec, member)
    }

    fn wipe(&self, spec: &ClusterSpec, member: &MemberRecord) -> Result<(), RuntimeError> {
        let dir = Self::member_dir(spec, member);
        let root = spec.cluster_dir();
        if !dir.starts_with(&root) || dir == root || member.name.contains('/') {
            return Err(RuntimeError::OutsideDataRoot(dir));
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", dir.display()))(e)),
        }
    }
}
