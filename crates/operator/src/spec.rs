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
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum), [1, 2, 2, 3, 3, 4]);
    }
}
