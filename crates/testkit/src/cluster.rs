//! A real etcd cluster of several members on loopback, for the failure tests: any member can
//! be killed (`SIGKILL`), restarted on its data dir, or paused (`SIGSTOP`, which to clients
//! and peers looks like a partitioned member) and resumed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::{etcd_binary, free_ports};

/// One member of an [`EtcdCluster`].
pub struct Member {
    name: String,
    client_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    /// `127.0.0.1:port` of its client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Its name (`m0`, `m1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether its process runs (paused or not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("member {} is not running", self.name))?
            .id();
        crate::send_signal(pid, signal)
    }
}

/// A running etcd cluster; every member is killed when it drops.
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader and every member
    /// answers.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = free_ports(2 * size)?
            .chunks(2)
            .map(|pair| (pair[0], pair[1]))
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data: PathBuf = dir.path().join(format!("m{i}"));
            let args: Vec<String> = vec![
                binary.display().to_string(),
                format!("--name=m{i}"),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=ferry-test".into(),
                "--log-level=error".into(),
            ];
            members.push(Member {
                name: format!("m{i}"),
                client_port: *client,
                args,
                child: None,
                paused: false,
            });
        }
        let mut cluster = Self { members, _dir: dir };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let child = Command::new(&member.args[0])
            .args(&member.args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting etcd member {}", member.name))?;
        member.child = Some(child);
        member.paused = false;
        Ok(())
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every member's endpoint, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A ferry client configuration listing every member.
    pub fn connect_config(&self) -> ferry_client::ConnectConfig {
        ferry_client::ConnectConfig::new(self.endpoints())
    }

    /// A client on member `i` only.
    pub async fn member_client(&self, i: usize) -> anyhow::Result<etcd_client::Client> {
        let config = ferry_client::ConnectConfig::new([self.members[i].endpoint()]);
        Ok(ferry_client::connect(&config).await?)
    }

    /// The index of the current leader, as the running members see it.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() || m.paused {
                    continue;
                }
                let Ok(mut c) = self.member_client(i).await else {
                    continue;
                };
                let Ok(status) = c.status().await else {
                    continue;
                };
                let leader = status.leader();
                if leader == 0 {
                    continue;
                }
                if let Ok(list) = c.member_list().await {
                    if let Some(member) = list.members().iter().find(|m| m.id() == leader) {
                        if let Some(index) =
                            self.members.iter().position(|m| m.name == member.name())
                        {
                            return Ok(index);
                        }
                    }
                }
            }
            anyhow::ensure!(Instant::now() < until, "the cluster has no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running, unpaused member answers and a leader is known.
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() || m.paused {
                continue;
            }
            loop {
                let healthy = match self.member_client(i).await {
                    Ok(mut c) => c.get("health", None).await.is_ok(),
                    Err(_) => false,
                };
                if healthy {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < until,
                    "member {} did not become healthy",
                    m.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.leader().await.map(|_| ())
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Starts member `i` again on its data dir (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i)
    }

    /// `SIGSTOP`: the member stops answering anyone, as if cut off by a partition.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].signal("-STOP")?;
        self.members[i].paused = true;
        let pid = self.members[i].child.as_ref().map(|c| c.id());
        pid.map_or(Ok(()), crate::wait_until_stopped)
    }

    /// `SIGCONT` after [`EtcdCluster::pause`].
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].signal("-CONT")?;
        self.members[i].paused = false;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
