//! A cluster's declared state: the JSON document `ferry cluster apply` stores, checked field
//! by field before anything changes.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The cluster sizes the operator runs: odd, so a quorum survives the loss of a minority.
pub const SIZES: [usize; 4] = [1, 3, 5, 7];

/// Flags the operator sets itself for every member; a spec may not set them.
const OWNED_FLAGS: [&str; 10] = [
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
    /// Where backups go: `file:///absolute/dir`.
    pub url: String,
}

impl BackupPolicy {
    /// The parsed schedule.
    pub fn cron(&self) -> Result<croner::Cron, String> {
        use std::str::FromStr as _;
        croner::Cron::from_str(&self.schedule).map_err(|e| e.to_string())
    }
}

/// The directory of a `file:///dir` URL.
pub fn file_url_dir(url: &str) -> Result<PathBuf, String> {
    let Some(path) = url.strip_prefix("file://") else {
        return Err(format!(
            "{url:?}: only file:///absolute/dir backends are built so far"
        ));
    };
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
    Ok(path)
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
        if let Some(backup) = &self.backup {
            backup
                .cron()
                .map_err(|e| invalid("backup.schedule", format!("{:?}: {e}", backup.schedule)))?;
            if backup.retain_count == 0 {
                return Err(invalid("backup.retain_count", "must be at least 1"));
            }
            file_url_dir(&backup.url).map_err(|e| invalid("backup.url", e))?;
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
            file_url_dir(from).map_err(|e| invalid("restore_from", e))?;
            if !from.ends_with(".db") {
                return Err(invalid(
                    "restore_from",
                    format!("{from:?} is not a backup (.db)"),
                ));
            }
        }
        Ok(())
    }

    /// The binary and flags members run with, as one comparable string.
    pub fn member_config(&self) -> String {
        serde_json::to_string(&self.etcd).unwrap_or_default()
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
    fn quorum_is_a_majority() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum), [1, 2, 2, 3, 3, 4]);
    }
}
