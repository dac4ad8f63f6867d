//! A cluster's declared state: the JSON document `ferry cluster apply` stores, checked field
//! by field before anything changes.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The cluster sizes the operator runs: odd, so a quorum survives the loss of a minority.
pub const SIZES: [usize; 4] = [1, 3, 5, 7];

/// Flags the operator sets itself for every member; a spec may not set them.
const OWNED_FLAGS: [&str; 20] = [
    "--name",
    "--data-dir",
    "--listen-client-urls",
    "--advertise-client-urls",
    "--listen-peer-urls",
    "--initial-advertise-peer-urls",
    "--initial-cluster",
    "--initial-cluster-state",
    "--initial-cluster-token",
    "--force-new-cluster",
    "--cert-file",
    "--key-file",
    "--trusted-ca-file",
    "--client-cert-auth",
    "--auto-tls",
    "--peer-cert-file",
    "--peer-key-file",
    "--peer-trusted-ca-file",
    "--peer-client-cert-auth",
    "--peer-auto-tls",
];

/// A declared etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The cluster's name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// How many voting members: 1, 3, 5 or 7.
    pub size: usize,
    /// The etcd binary and extra flags.
    pub etcd: EtcdSpec,
    /// Where member data dirs go (`<data_root>/<cluster>/<member>`): an absolute path.
    pub data_root: PathBuf,
    /// How long a member may be gone or unhealthy before it is replaced (Go duration; 30s).
    #[serde(default = "default_failure_grace", with = "go_duration")]
    pub failure_grace: Duration,
    /// How long a new learner may take to catch up before it is removed (Go duration; 2m).
    #[serde(default = "default_learner_timeout", with = "go_duration")]
    pub learner_timeout: Duration,
    /// TLS on the members' client and peer URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Scheduled, verified snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,
    /// When members are defragmented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defrag: Option<DefragPolicy>,
    /// A verified backup (its URL) the cluster starts from instead of an empty store; set by
    /// `ferry cluster restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
}

/// TLS for the members: each side present is served over https with these files (one
/// certificate for every member, valid for 127.0.0.1, as they all run on this host).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The client URLs. The operator presents `cert_file` as its client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<TlsFiles>,
    /// The peer URLs (members present `cert_file` to each other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<TlsFiles>,
}

/// One side's certificate, key and CA (absolute paths on the operator's host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The member certificate (PEM).
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
    /// The CA that signed the certificates the members accept.
    pub trusted_ca_file: PathBuf,
    /// Whether members require a client certificate signed by that CA.
    #[serde(default)]
    pub client_cert_auth: bool,
}

impl TlsFiles {
    fn validate(&self, side: &str) -> Result<(), SpecError> {
        check_absolute(&format!("tls.{side}.cert_file"), &self.cert_file)?;
        check_absolute(&format!("tls.{side}.key_file"), &self.key_file)?;
        check_absolute(
            &format!("tls.{side}.trusted_ca_file"),
            &self.trusted_ca_file,
        )
    }

    /// etcd's flags for this side (`prefix` is `""` or `"peer-"`).
    pub fn flags(&self, prefix: &str) -> Vec<String> {
        let mut flags = vec![
            format!("--{prefix}cert-file={}", self.cert_file.display()),
            format!("--{prefix}key-file={}", self.key_file.display()),
            format!(
                "--{prefix}trusted-ca-file={}",
                self.trusted_ca_file.display()
            ),
        ];
        if self.client_cert_auth {
            flags.push(format!("--{prefix}client-cert-auth"));
        }
        flags
    }
}

impl ClusterSpec {
    /// Whether the members' client URLs are https.
    pub fn client_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client.is_some())
    }

    /// Whether the members' peer URLs are https.
    pub fn peer_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.peer.is_some())
    }

    /// The TLS flags every member starts with.
    pub fn tls_flags(&self) -> Vec<String> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let mut flags = tls.client.as_ref().map(|c| c.flags("")).unwrap_or_default();
        flags.extend(
            tls.peer
                .as_ref()
                .map(|p| p.flags("peer-"))
                .unwrap_or_default(),
        );
        flags
    }
}

/// When a member's database is defragmented: once the fraction of it that is free (after
/// compaction) exceeds `free_fraction` and it is larger than `min_db_bytes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefragPolicy {
    /// Between 0 and 1 (exclusive), e.g. 0.5.
    pub free_fraction: f64,
    /// Smaller databases are left alone (default 16 MiB).
    #[serde(default = "default_min_db_bytes")]
    pub min_db_bytes: u64,
}

impl Eq for DefragPolicy {}

fn default_min_db_bytes() -> u64 {
    16 << 20
}

/// When snapshots are taken, how many are kept, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// A cron schedule: five fields, or six with seconds first (`0 3 * * *`, `*/30 * * * * *`).
    pub schedule: String,
    /// How many backups to keep (at least 1).
    pub retain_count: usize,
    /// Backups older than this are deleted (Go duration), the newest one always kept.
    #[serde(
        default,
        with = "optional_go_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub retain_age: Option<Duration>,
    /// Where backups go: `file:///absolute/dir` or `s3://bucket/prefix`.
    pub url: String,
    /// How the `s3://` backend is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Options>,
}

impl BackupPolicy {
    /// The parsed schedule.
    pub fn cron(&self) -> Result<croner::Cron, String> {
        use std::str::FromStr as _;
        croner::Cron::from_str(&self.schedule).map_err(|e| e.to_string())
    }
}

/// Where a backend (or one backup in it) is, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupLocation {
    /// `file:///absolute/dir`: a directory on the operator's host.
    File(PathBuf),
    /// `s3://bucket/prefix`: objects under `prefix` (possibly empty) in an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
}

impl BackupLocation {
    /// Parses `file:///absolute/dir` or `s3://bucket/prefix`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            {
                return Err(format!(
                    "{url:?}: the path must be absolute, without . or .."
                ));
            }
            return Ok(Self::File(path));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(format!(
                    "{url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty()
                && prefix.split('/').any(|segment| {
                    segment.is_empty()
                        || segment == "."
                        || segment == ".."
                        || segment.chars().any(char::is_control)
                })
            {
                return Err(format!(
                    "{url:?}: the prefix must be '/'-separated names, without empty, . or .. segments"
                ));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        Err(format!(
            "{url:?}: a backend is file:///absolute/dir or s3://bucket/prefix"
        ))
    }

    /// The canonical URL.
    pub fn url(&self) -> String {
        match self {
            Self::File(dir) => format!("file://{}", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// How an `s3://` backend is reached. Credentials left out here come from the operator's
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), which keeps them out of
/// the management store.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// The S3 endpoint (`https://s3.example.com:9000`); AWS when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Allows a plain `http://` endpoint (a test server on loopback).
    #[serde(default)]
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Options {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(endpoint) = &self.endpoint {
            let plain = endpoint.starts_with("http://");
            if !plain && !endpoint.starts_with("https://") {
                return Err(invalid(
                    "backup.s3.endpoint",
                    format!("{endpoint:?} is not an http:// or https:// URL"),
                ));
            }
            if plain && !self.allow_http {
                return Err(invalid(
                    "backup.s3.endpoint",
                    format!("{endpoint:?} is plain http: set backup.s3.allow_http to true"),
                ));
            }
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(invalid(
                "backup.s3",
                "access_key_id and secret_access_key go together",
            ));
        }
        Ok(())
    }
}

mod optional_go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::go_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| ferry_client::duration::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The etcd binary and its extra flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpec {
    /// An absolute path to the `etcd` binary.
    pub binary: PathBuf,
    /// Extra flags, each `--flag=value` (not the ones the operator sets).
    #[serde(default)]
    pub flags: Vec<String>,
    /// The matching `etcdctl` (snapshot restore and verification); default: the one next to
    /// `binary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcdctl: Option<PathBuf>,
}

impl EtcdSpec {
    /// The `etcdctl` to use.
    pub fn etcdctl(&self) -> PathBuf {
        self.etcdctl.clone().unwrap_or_else(|| {
            self.binary
                .parent()
                .map(|dir| dir.join("etcdctl"))
                .unwrap_or_else(|| PathBuf::from("etcdctl"))
        })
    }
}

fn default_failure_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_learner_timeout() -> Duration {
    Duration::from_secs(120)
}

mod go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string().replace(' ', ""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        ferry_client::duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A spec that cannot be applied: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// The field's path (`etcd.binary`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_absolute(field: &str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(invalid(
            field,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(
            field,
            format!("{} may not contain . or ..", path.display()),
        ));
    }
    if path
        .to_str()
        .is_none_or(|p| p.chars().any(char::is_control))
    {
        return Err(invalid(field, "must be UTF-8 without control characters"));
    }
    Ok(())
}

impl ClusterSpec {
    /// Parses and checks a spec; the error names the field.
    pub fn parse(json: &[u8]) -> Result<Self, SpecError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let spec: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            invalid(
                if field == "." { "spec" } else { &field },
                e.into_inner().to_string(),
            )
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !ferry_registry::valid_name(&self.name) || self.name.len() > 63 {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1 to 63 letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if !SIZES.contains(&self.size) {
            return Err(invalid(
                "size",
                format!("{} is not one of 1, 3, 5, 7", self.size),
            ));
        }
        check_absolute("etcd.binary", &self.etcd.binary)?;
        check_absolute("data_root", &self.data_root)?;
        for (i, flag) in self.etcd.flags.iter().enumerate() {
            let field = format!("etcd.flags[{i}]");
            if !flag.starts_with("--") || flag.chars().any(char::is_control) {
                return Err(invalid(
                    &field,
                    format!("{flag:?} is not a --flag or --flag=value"),
                ));
            }
            let name = flag.split('=').next().unwrap_or(flag);
            if OWNED_FLAGS.contains(&name) {
                return Err(invalid(
                    &field,
                    format!("{name} is set by the operator for each member"),
                ));
            }
        }
        if self.failure_grace < Duration::from_secs(1) {
            return Err(invalid("failure_grace", "must be at least 1s"));
        }
        if self.learner_timeout < Duration::from_secs(5) {
            return Err(invalid("learner_timeout", "must be at least 5s"));
        }
        if let Some(etcdctl) = &self.etcd.etcdctl {
            check_absolute("etcd.etcdctl", etcdctl)?;
        }
        if let Some(tls) = &self.tls {
            if let Some(client) = &tls.client {
                client.validate("client")?;
            }
            if let Some(peer) = &tls.peer {
                peer.validate("peer")?;
            }
        }
        if let Some(backup) = &self.backup {
            backup
                .cron()
                .map_err(|e| invalid("backup.schedule", format!("{:?}: {e}", backup.schedule)))?;
            if backup.retain_count == 0 {
                return Err(invalid("backup.retain_count", "must be at least 1"));
            }
            let location =
                BackupLocation::parse(&backup.url).map_err(|e| invalid("backup.url", e))?;
            match (&location, &backup.s3) {
                (BackupLocation::File(_), Some(_)) => {
                    return Err(invalid("backup.s3", "only for an s3:// backup.url"));
                }
                (_, Some(s3)) => s3.validate()?,
                _ => {}
            }
        }
        if let Some(defrag) = &self.defrag {
            if !(defrag.free_fraction > 0.0 && defrag.free_fraction < 1.0) {
                return Err(invalid(
                    "defrag.free_fraction",
                    format!("{} is not between 0 and 1", defrag.free_fraction),
                ));
            }
        }
        if let Some(from) = &self.restore_from {
            let location = BackupLocation::parse(from).map_err(|e| invalid("restore_from", e))?;
            let reachable = self
                .backup
                .as_ref()
                .is_some_and(|b| from.starts_with(&format!("{}/", b.url.trim_end_matches('/'))));
            if matches!(location, BackupLocation::S3 { .. }) && !reachable {
                return Err(invalid(
                    "restore_from",
                    format!("{from:?}: an s3:// backup is read through backup.url and backup.s3, which must reach it"),
                ));
            }
            if !from.ends_with(".db") {
                return Err(invalid(
                    "restore_from",
                    format!("{from:?} is not a backup (.db)"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `self` may replace `old`, the spec of a running cluster: its members' data
    /// dirs and their URLs' schemes (in etcd's member list) stay what they were.
    pub fn check_update(&self, old: &ClusterSpec) -> Result<(), SpecError> {
        if self.data_root != old.data_root {
            return Err(invalid(
                "data_root",
                format!(
                    "cannot change on an existing cluster (its members live in {})",
                    old.data_root.display()
                ),
            ));
        }
        if self.client_tls() != old.client_tls() {
            return Err(invalid(
                "tls.client",
                "cannot be added or removed on an existing cluster (the members' client URLs are in etcd's member list); restore a backup into a new cluster instead",
            ));
        }
        if self.peer_tls() != old.peer_tls() {
            return Err(invalid(
                "tls.peer",
                "cannot be added or removed on an existing cluster (the members' peer URLs are in etcd's member list); restore a backup into a new cluster instead",
            ));
        }
        Ok(())
    }

    /// The binary and flags members run with, as one comparable string.
    pub fn member_config(&self) -> String {
        let etcd = serde_json::to_string(&self.etcd).unwrap_or_default();
        match &self.tls {
            // New certificate paths are a rolling change too.
            Some(tls) => format!("{etcd} {}", serde_json::to_string(tls).unwrap_or_default()),
            None => etcd,
        }
    }

    /// Where this cluster's members keep their data.
    pub fn cluster_dir(&self) -> PathBuf {
        self.data_root.join(&self.name)
    }
}

/// How many voting members must agree: a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(json: &str) -> SpecError {
        ClusterSpec::parse(json.as_bytes()).expect_err("refused")
    }

    #[test]
    fn the_smallest_spec_is_accepted_with_defaults() {
        let spec = ClusterSpec::parse(
            br#"{"name": "main", "size": 3, "etcd": {"binary": "/usr/bin/etcd"}, "data_root": "/var/lib/ferry-etcd"}"#,
        )
        .expect("valid");
        assert_eq!(spec.size, 3);
        assert_eq!(spec.failure_grace, Duration::from_secs(30));
        assert_eq!(
            spec.cluster_dir(),
            PathBuf::from("/var/lib/ferry-etcd/main")
        );
        let round_trip =
            ClusterSpec::parse(&serde_json::to_vec(&spec).expect("serializes")).expect("valid");
        assert_eq!(round_trip, spec);
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = |patch: &str| {
            format!(
                r#"{{"name": "main", "size": 3, "etcd": {{"binary": "/usr/bin/etcd"}}, "data_root": "/d"{patch}}}"#
            )
        };
        let unknown = error_of(&base(r#", "colour": 1"#));
        assert_eq!(unknown.field, "colour");
        assert!(unknown.reason.contains("unknown field"), "{unknown}");
        assert_eq!(
            error_of(r#"{"name": "a b", "size": 3, "etcd": {"binary": "/e"}, "data_root": "/d"}"#)
                .field,
            "name"
        );
        assert_eq!(
            error_of(r#"{"name": "m", "size": 2, "etcd": {"binary": "/e"}, "data_root": "/d"}"#)
                .field,
            "size"
        );
        assert_eq!(
            error_of(r#"{"name": "m", "size": 3, "etcd": {"binary": "etcd"}, "data_root": "/d"}"#)
                .field,
            "etcd.binary"
        );
        assert_eq!(
            error_of(
                r#"{"name": "m", "size": 3, "etcd": {"binary": "/e"}, "data_root": "/d/../x"}"#
            )
            .field,
            "data_root"
        );
        let flag = error_of(
            r#"{"name": "m", "size": 3, "etcd": {"binary": "/e", "flags": ["--data-dir=/x"]}, "data_root": "/d"}"#,
        );
        assert_eq!(flag.field, "etcd.flags[0]");
        assert!(flag.reason.contains("set by the operator"), "{flag}");
        assert_eq!(
            error_of(&base(r#", "failure_grace": "soon""#)).field,
            "failure_grace"
        );
        assert_eq!(
            error_of(r#"{"name": "m", "size": "3", "etcd": {"binary": "/e"}, "data_root": "/d"}"#)
                .field,
            "size"
        );
        let backup = |b: &str| base(&format!(r#", "backup": {b}"#));
        assert_eq!(
            error_of(&backup(
                r#"{"schedule": "every day", "retain_count": 3, "url": "file:///b"}"#
            ))
            .field,
            "backup.schedule"
        );
        assert_eq!(
            error_of(&backup(
                r#"{"schedule": "0 3 * * *", "retain_count": 0, "url": "file:///b"}"#
            ))
            .field,
            "backup.retain_count"
        );
        assert_eq!(
            error_of(&backup(
                r#"{"schedule": "0 3 * * *", "retain_count": 3, "url": "ftp://b"}"#
            ))
            .field,
            "backup.url"
        );
        ClusterSpec::parse(
            backup(r#"{"schedule": "*/2 * * * * *", "retain_count": 3, "retain_age": "1h", "url": "file:///b"}"#)
                .as_bytes(),
        )
        .expect("seconds-first schedules are accepted");
    }

    #[test]
    fn s3_backends_are_checked_field_by_field() {
        let with = |b: &str, rest: &str| {
            format!(
                r#"{{"name": "m", "size": 1, "etcd": {{"binary": "/e"}}, "data_root": "/d", "backup": {{"schedule": "0 3 * * *", "retain_count": 3, {b}}}{rest}}}"#
            )
        };
        let spec = ClusterSpec::parse(
            with(
                r#""url": "s3://ferry-backups/prod/etcd/", "s3": {"endpoint": "https://s3.example.com", "access_key_id": "id", "secret_access_key": "secret"}"#,
                r#", "restore_from": "s3://ferry-backups/prod/etcd/m/1-rev2.db""#,
            )
            .as_bytes(),
        )
        .expect("valid");
        assert!(
            !format!("{spec:?}").contains("secret\""),
            "the secret is not printed: {spec:?}"
        );
        assert_eq!(
            BackupLocation::parse("s3://ferry-backups/prod/etcd/"),
            Ok(BackupLocation::S3 {
                bucket: "ferry-backups".into(),
                prefix: "prod/etcd".into()
            })
        );
        for (backup, rest, field, reason) in [
            (
                r#""url": "s3://Bad_Bucket/x""#,
                "",
                "backup.url",
                "bucket name",
            ),
            (
                r#""url": "s3://ok-bucket/a//b""#,
                "",
                "backup.url",
                "prefix",
            ),
            (
                r#""url": "s3://ok-bucket/../b""#,
                "",
                "backup.url",
                "prefix",
            ),
            (
                r#""url": "file:///b", "s3": {}"#,
                "",
                "backup.s3",
                "only for an s3://",
            ),
            (
                r#""url": "s3://ok-bucket", "s3": {"endpoint": "http://127.0.0.1:9000"}"#,
                "",
                "backup.s3.endpoint",
                "allow_http",
            ),
            (
                r#""url": "s3://ok-bucket", "s3": {"endpoint": "ftp://h"}"#,
                "",
                "backup.s3.endpoint",
                "not an http",
            ),
            (
                r#""url": "s3://ok-bucket", "s3": {"access_key_id": "id"}"#,
                "",
                "backup.s3",
                "go together",
            ),
            (
                r#""url": "s3://ok-bucket", "s3": {"region": "eu-west-1", "token": "x"}"#,
                "",
                "backup.s3.token",
                "unknown field",
            ),
            (
                r#""url": "s3://ok-bucket/prod""#,
                r#", "restore_from": "s3://other-bucket/prod/m/1-rev2.db""#,
                "restore_from",
                "must reach it",
            ),
        ] {
            let error = error_of(&with(backup, rest));
            assert_eq!(error.field, field, "{backup}: {error}");
            assert!(error.reason.contains(reason), "{backup}: {error}");
        }
    }

    #[test]
    fn tls_is_checked_and_fixed_for_the_life_of_a_cluster() {
        let with = |tls: &str| {
            format!(
                r#"{{"name": "m", "size": 3, "etcd": {{"binary": "/e"}}, "data_root": "/d"{tls}}}"#
            )
        };
        let side = r#"{"cert_file": "/c.pem", "key_file": "/k.pem", "trusted_ca_file": "/ca.pem", "client_cert_auth": true}"#;
        let secure = ClusterSpec::parse(
            with(&format!(r#", "tls": {{"client": {side}, "peer": {side}}}"#)).as_bytes(),
        )
        .expect("valid");
        let flags = secure.tls_flags();
        assert!(
            flags.contains(&"--cert-file=/c.pem".to_string()),
            "{flags:?}"
        );
        assert!(
            flags.contains(&"--peer-client-cert-auth".to_string()),
            "{flags:?}"
        );
        assert_eq!(
            error_of(&with(
                r#", "tls": {"peer": {"cert_file": "c.pem", "key_file": "/k", "trusted_ca_file": "/ca"}}"#
            ))
            .field,
            "tls.peer.cert_file"
        );
        assert_eq!(
            error_of(
                r#"{"name": "m", "size": 3, "etcd": {"binary": "/e", "flags": ["--peer-auto-tls"]}, "data_root": "/d"}"#
            )
            .field,
            "etcd.flags[0]"
        );
        let plain = ClusterSpec::parse(with("").as_bytes()).expect("valid");
        assert_eq!(
            plain.check_update(&secure).expect_err("refused").field,
            "tls.client"
        );
        assert_ne!(plain.member_config(), secure.member_config());
        let mut moved = secure.clone();
        moved.data_root = PathBuf::from("/elsewhere");
        assert_eq!(
            moved.check_update(&secure).expect_err("refused").field,
            "data_root"
        );
        let mut scaled = secure.clone();
        scaled.size = 5;
        scaled
            .check_update(&secure)
            .expect("a size change is an update");
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum), [1, 2, 2, 3, 3, 4]);
    }
}
