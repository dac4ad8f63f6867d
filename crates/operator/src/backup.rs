//! Backups: a snapshot streamed from a healthy member, verified before it counts (restored
//! with `etcdctl snapshot restore` into a temporary data dir, served by a temporary etcd, and
//! its key-value hash compared with the source member's at the same revision), then stored
//! with a metadata record; retention by count and age; restoring a seed's data dir from one.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::spec::{BackupLocation, BackupPolicy, ClusterSpec, S3Options};

/// A stored, verified backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The cluster it was taken from.
    pub cluster: String,
    /// Its URL (`<backend URL>/<cluster>/<name>.db`): what `restore --from` takes.
    pub url: String,
    /// The store revision it holds.
    pub revision: i64,
    /// The key-value hash at that revision (etcd's HashKV), the same in the backup and the
    /// source member.
    pub hash: u32,
    /// When it was taken (Unix seconds).
    pub time: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Talking to the source member or the temporary one failed.
    #[error("{0}")]
    Etcd(String),
    /// The backend failed.
    #[error("backup store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file or process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot did not restore to the state it was taken from.
    #[error("verification failed: {0}")]
    Verification(String),
    /// A URL that is not a backend this build has.
    #[error("{0}")]
    Url(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

fn etcd_err(what: &str) -> impl Fn(etcd_client::Error) -> BackupError + '_ {
    move |e| BackupError::Etcd(format!("{what}: {e}"))
}

/// A backend and the URL it was opened from.
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl Backend {
    /// Opens the backend of `policy` (a `file://` directory is created when missing).
    pub fn open(policy: &BackupPolicy) -> Result<Self, BackupError> {
        let location = BackupLocation::parse(&policy.url).map_err(BackupError::Url)?;
        Self::open_location(&location, policy.s3.as_ref())
    }

    /// The backend a backup URL is read from: `policy`'s when the URL lies in it, else (for
    /// a `file://` URL) the directory that holds it.
    pub fn holding(url: &str, policy: Option<&BackupPolicy>) -> Result<Self, BackupError> {
        if let Some(policy) = policy {
            let backend = Self::open(policy)?;
            if backend.object_name(url).is_ok() {
                return Ok(backend);
            }
        }
        match BackupLocation::parse(url).map_err(BackupError::Url)? {
            BackupLocation::File(path) => {
                let dir = path.parent().ok_or_else(|| {
                    BackupError::Url(format!("{url}: not a file in a directory"))
                })?;
                Self::open_location(&BackupLocation::File(dir.to_path_buf()), None)
            }
            BackupLocation::S3 { .. } => Err(BackupError::Url(format!(
                "{url}: an s3:// backup is read with the backup.url and backup.s3 of a spec that reaches it"
            ))),
        }
    }

    fn open_location(
        location: &BackupLocation,
        s3: Option<&S3Options>,
    ) -> Result<Self, BackupError> {
        let store: Arc<dyn ObjectStore> = match location {
            BackupLocation::File(dir) => {
                std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
                Arc::new(LocalFileSystem::new_with_prefix(dir)?)
            }
            BackupLocation::S3 { bucket, prefix } => {
                // The S3 client's TLS runs on ring, the provider the rest of ferry uses; it
                // must be the process default before the client is built (a no-op once it
                // is).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let options = s3.cloned().unwrap_or_default();
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(options.region.as_deref().unwrap_or("us-east-1"))
                    .with_allow_http(options.allow_http);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let (Some(id), Some(secret)) =
                    (&options.access_key_id, &options.secret_access_key)
                {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret);
                }
                let store = builder.build()?;
                if prefix.is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(PrefixStore::new(store, prefix.as_str()))
                }
            }
        };
        Ok(Self {
            store,
            url: location.url(),
        })
    }

    /// The backend's URL (`file:///dir`, `s3://bucket/prefix`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every backup of `cluster`, newest first.
    pub async fn list(&self, cluster: &str) -> Result<Vec<BackupInfo>, BackupError> {
        let prefix = ObjectPath::from(cluster);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut backups = Vec::new();
        for meta in metas {
            if meta.location.extension() != Some("json") {
                continue;
            }
            let bytes = self.store.get(&meta.location).await?.bytes().await?;
            match serde_json::from_slice::<BackupInfo>(&bytes) {
                Ok(info) => backups.push(info),
                Err(e) => {
                    tracing::warn!(location = %meta.location, error = %e, "not a backup record")
                }
            }
        }
        backups.sort_by(|a, b| (b.time, &b.url).cmp(&(a.time, &a.url)));
        Ok(backups)
    }

    /// Deletes the backups `policy` no longer keeps (beyond the count, or older than the
    /// age; never the newest); returns how many went.
    pub async fn apply_retention(
        &self,
        cluster: &str,
        policy: &BackupPolicy,
        now: u64,
    ) -> Result<usize, BackupError> {
        let backups = self.list(cluster).await?;
        let mut deleted = 0;
        for (i, backup) in backups.iter().enumerate() {
            let too_many = i >= policy.retain_count;
            let too_old = i > 0
                && policy
                    .retain_age
                    .is_some_and(|age| now.saturating_sub(backup.time) > age.as_secs());
            if too_many || too_old {
                let name = self.object_name(&backup.url)?;
                self.store.delete(&ObjectPath::from(name.clone())).await?;
                self.store.delete(&record_of(&name)).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Reads a backup (its `.db`) into memory.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, BackupError> {
        let name = self.object_name(url)?;
        let bytes = self
            .store
            .get(&ObjectPath::from(name))
            .await?
            .bytes()
            .await?;
        Ok(bytes.to_vec())
    }

    /// The record stored beside a backup's `.db`.
    pub async fn info_of(&self, url: &str) -> Result<BackupInfo, BackupError> {
        let record = record_of(&self.object_name(url)?);
        let bytes = self.store.get(&record).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| BackupError::Url(format!("{record}: {e}")))
    }

    fn object_name(&self, url: &str) -> Result<String, BackupError> {
        url.strip_prefix(&format!("{}/", self.url))
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .ok_or_else(|| BackupError::Url(format!("{url} is not in {}", self.url)))
    }

    async fn store(&self, name: &str, data: Vec<u8>, info: &BackupInfo) -> Result<(), BackupError> {
        self.store
            .put(
                &ObjectPath::from(format!("{name}.db")),
                PutPayload::from(data),
            )
            .await?;
        let record =
            serde_json::to_vec_pretty(info).map_err(|e| BackupError::Url(e.to_string()))?;
        self.store
            .put(
                &ObjectPath::from(format!("{name}.json")),
                PutPayload::from(record),
            )
            .await?;
        Ok(())
    }
}

/// The record object beside a backup object (`x.db` → `x.json`).
fn record_of(name: &str) -> ObjectPath {
    ObjectPath::from(format!("{}.json", name.trim_end_matches(".db")))
}

/// Restores `snapshot` into `data_dir` as the only member `name` at `peer_url` of a new
/// cluster with `token` (what a restored cluster's seed starts from).
pub fn restore_into(
    spec: &ClusterSpec,
    snapshot: &Path,
    data_dir: &Path,
    name: &str,
    peer_url: &str,
    token: &str,
) -> Result<(), BackupError> {
    let etcdctl = spec.etcd.etcdctl();
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={name}={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster-token={token}"))
        .stdout(Stdio::null())
        .output()
        .map_err(io(format!("running {}", etcdctl.display())))?;
    if !out.status.success() {
        return Err(BackupError::Verification(format!(
            "etcdctl snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A temporary etcd on a restored data dir, killed when dropped.
struct TemporaryMember(std::process::Child);

impl Drop for TemporaryMember {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn hash_at(client: &mut Client, revision: i64, what: &str) -> Result<u32, BackupError> {
    let response = tokio::time::timeout(Duration::from_secs(10), client.hash_kv(revision))
        .await
        .map_err(|_| BackupError::Etcd(format!("{what}: no HashKV answer")))?
        .map_err(etcd_err(what))?;
    Ok(response.hash())
}

/// Takes a snapshot from the member at `source_url`, verifies it, stores it in `backend`
/// under `<cluster>/<time>-rev<revision>`, and returns its record. `work` is a scratch dir.
pub async fn take(
    spec: &ClusterSpec,
    source_url: &str,
    backend: &Backend,
    work: &Path,
) -> Result<BackupInfo, BackupError> {
    let mut source = crate::etcd::Access::of(spec)
        .map_err(|e| BackupError::Etcd(e.0))?
        .member_client(source_url)
        .await
        .map_err(|e| BackupError::Etcd(e.0))?;
    let mut stream = source
        .snapshot()
        .await
        .map_err(etcd_err("starting the snapshot"))?;
    let mut data = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .map_err(|_| BackupError::Etcd("the snapshot stream stalled".into()))?
        .map_err(etcd_err("reading the snapshot"))?
    {
        data.extend_from_slice(chunk.blob());
    }
    let scratch = work.join(format!("verify-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let result = verify(spec, &mut source, &data, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (revision, hash) = result?;
    let time = crate::records::now();
    let stamp = chrono::DateTime::from_timestamp(i64::try_from(time).unwrap_or(0), 0)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| time.to_string());
    let name = format!("{}/{stamp}-rev{revision}", spec.name);
    let info = BackupInfo {
        cluster: spec.name.clone(),
        url: format!("{}/{name}.db", backend.url),
        revision,
        hash,
        time,
        size: data.len() as u64,
    };
    backend.store(&name, data, &info).await?;
    Ok(info)
}

/// Restores `data` into a temporary member and compares its hash with the source's at the
/// restored revision.
async fn verify(
    spec: &ClusterSpec,
    source: &mut Client,
    data: &[u8],
    scratch: &Path,
) -> Result<(i64, u32), BackupError> {
    let file: PathBuf = scratch.join("snapshot.db");
    std::fs::write(&file, data).map_err(io(format!("writing {}", file.display())))?;
    let ports = ferry_client::free_loopback_ports(2).map_err(io("allocating two ports"))?;
    let peer = format!("http://127.0.0.1:{}", ports[0]);
    let client_url = format!("http://127.0.0.1:{}", ports[1]);
    let data_dir = scratch.join("data");
    restore_into(spec, &file, &data_dir, "verify", &peer, "ferry-verify")?;
    let mut command = Command::new(&spec.etcd.binary);
    // The temporary member dies with the operator, even with a kill -9 (then no drop runs).
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2),
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = command
        .arg("--name=verify")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=verify={peer}"))
        .arg("--log-level=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("starting {}", spec.etcd.binary.display())))?;
    let _member = TemporaryMember(child);
    let until = Instant::now() + Duration::from_secs(30);
    let (mut restored, revision) = loop {
        if let Ok(mut c) = Client::connect([client_url.as_str()], None).await {
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                if status.leader() != 0 {
                    let revision = status.header().map(|h| h.revision()).unwrap_or(0);
                    break (c, revision);
                }
            }
        }
        if Instant::now() > until {
            return Err(BackupError::Verification(
                "the restored snapshot never served".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let restored_hash = hash_at(&mut restored, revision, "hashing the restored snapshot").await?;
    let source_hash = hash_at(source, revision, "hashing the source member").await?;
    if restored_hash != source_hash {
        return Err(BackupError::Verification(format!(
            "at revision {revision} the restored snapshot hashes to {restored_hash:08x}, the source to {source_hash:08x}"
        )));
    }
    Ok((revision, restored_hash))
}
