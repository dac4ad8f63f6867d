//! The configuration document: a typed ingress (virtual hosts, paths, upstreams, TLS,
//! timeouts) or an opaque JSON document for custom templates. Bad input is refused with the
//! field path and the reason.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// A configuration for one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum IngressDocument {
    /// The typed ingress document the default nginx templates render.
    Ingress(Ingress),
    /// Any JSON object, for users' own templates.
    Opaque {
        /// The document.
        data: serde_json::Map<String, serde_json::Value>,
        /// How a new version reaches the agents (all at once when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<RolloutStrategy>,
    },
}

/// Virtual hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// The virtual hosts, each with its paths.
    pub virtual_hosts: Vec<VirtualHost>,
    /// How a new version reaches the agents (all at once when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStrategy>,
}

/// A rollout in waves: each wave's agents run the new version, then the next wave starts
/// once every agent of the wave applied it and the bake time passed without a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStrategy {
    /// Cumulative wave sizes: a number of agents (`1`) or a share of the live agents
    /// (`"25%"`, rounded up). A last wave that leaves agents out is followed by one with
    /// all of them.
    pub waves: Vec<WaveSize>,
    /// How long a wave runs the new version without a failure before the next starts.
    #[serde(default)]
    pub bake_seconds: u32,
    /// What a failure in a wave does.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// One wave's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaveSize {
    /// This many agents.
    Agents(u32),
    /// This share of the live agents, `"1%"` to `"100%"`.
    Share(String),
}

/// What a failing agent does to a rollout in waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop, and return the agents that applied the new version to the previous one.
    #[default]
    Rollback,
    /// Stop; agents keep what they run.
    Halt,
}

impl WaveSize {
    /// The percentage of a share (`"25%"` → 25).
    fn percent(share: &str) -> Option<u32> {
        let digits = share.strip_suffix('%')?;
        let plain = !digits.is_empty()
            && digits.len() <= 3
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit());
        if !plain {
            return None;
        }
        digits.parse().ok().filter(|p| (1..=100).contains(p))
    }
}

impl RolloutStrategy {
    /// The largest number of waves.
    pub const MAX_WAVES: usize = 10;

    fn validate(&self, at: &str) -> Result<(), ValidationError> {
        if self.waves.is_empty() || self.waves.len() > Self::MAX_WAVES {
            return Err(invalid(
                format!("{at}.waves"),
                format!("1 to {} waves", Self::MAX_WAVES),
            ));
        }
        for (i, wave) in self.waves.iter().enumerate() {
            let ok = match wave {
                WaveSize::Agents(n) => (1..=100_000).contains(n),
                WaveSize::Share(s) => WaveSize::percent(s).is_some(),
            };
            if !ok {
                return Err(invalid(
                    format!("{at}.waves[{i}]"),
                    "a number of agents (1 to 100000) or a share from \"1%\" to \"100%\"",
                ));
            }
        }
        if self.bake_seconds > 86_400 {
            return Err(invalid(
                format!("{at}.bake_seconds"),
                format!("{} is more than a day (86400)", self.bake_seconds),
            ));
        }
        Ok(())
    }

    /// How many agents each wave covers, out of `live` agents: cumulative, growing, the
    /// last one all of them. No wave when there is no agent.
    pub fn sizes(&self, live: usize) -> Vec<usize> {
        let mut sizes: Vec<usize> = Vec::new();
        for wave in &self.waves {
            let size = match wave {
                WaveSize::Agents(n) => (*n as usize).min(live),
                WaveSize::Share(s) => {
                    let p = WaveSize::percent(s).unwrap_or(100) as usize;
                    (p * live).div_ceil(100)
                }
            };
            let size = size.max(sizes.last().copied().unwrap_or(0));
            if size > 0 && sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        if live > 0 && sizes.last() != Some(&live) {
            sizes.push(live);
        }
        sizes
    }
}

/// One virtual host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Host name (`shop.example.com`, or `*.example.com`).
    pub hostname: String,
    /// TLS termination, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Routes by path prefix.
    pub paths: Vec<PathRule>,
}

/// TLS files on the agent's host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain (PEM) path.
    pub certificate: String,
    /// Private key (PEM) path.
    pub key: String,
    /// Answer plain-HTTP requests with a permanent redirect (308) to HTTPS instead of
    /// serving them (ingress-nginx's `ssl-redirect`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_http: bool,
}

/// A path prefix and where it goes: a registry service or static backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Path prefix, starting with `/`.
    pub path: String,
    /// Registry service whose instances (`/services/<name>/*`) are the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Static upstream servers (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    /// Connect timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<u32>,
    /// Read timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout_seconds: Option<u32>,
}

/// Why a document was refused: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{path}: {reason}")]
pub struct ValidationError {
    /// Field path, e.g. `virtual_hosts[0].paths[1].path`.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.into(),
        reason: reason.into(),
    }
}

fn valid_hostname(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_backend(b: &str) -> bool {
    ferry_client::HostPort::parse(b).is_ok()
}

/// A file path on the agent's host: absolute, from a strict character set, without `..`
/// segments. It goes into nginx's configuration, so nothing that nginx could read as syntax
/// (whitespace, `;`, braces, quotes, `#`, `$`, backslashes) may appear in it.
fn valid_file_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must be an absolute path");
    }
    if p.len() > 1024 {
        return Err("must be at most 1024 characters");
    }
    if !p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+' | '@' | '='))
    {
        return Err("may only contain letters, digits and / . - _ + @ =");
    }
    if p.split('/').any(|segment| segment == "..") {
        return Err("must not contain .. segments");
    }
    Ok(())
}

/// A location prefix: `/` followed by URL path characters. Percent-encoding is allowed;
/// nothing nginx reads as syntax or as a variable (`$`) is.
fn valid_location(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must start with /");
    }
    if p.len() > 1024 {
        return Err("must be at most 1024 characters");
    }
    if !p.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '/' | '.' | '-' | '_' | '~' | '%' | '!' | '*' | '+' | ',' | '=' | ':' | '@'
            )
    }) {
        return Err("may only contain letters, digits and / . - _ ~ % ! * + , = : @");
    }
    Ok(())
}

/// serde reads `null` as an absent optional field; the contract (and the OpenAPI schema)
/// says a field of an ingress document is either there with a value or left out, so a
/// `null` is refused where it stands.
fn reject_nulls(value: &serde_json::Value, at: &str) -> Result<(), ValidationError> {
    match null_below(value) {
        Some(below) => Err(invalid(
            format!("{at}{below}"),
            "null is not a value here: leave the field out",
        )),
        None => Ok(()),
    }
}

/// The path from `value` to the first null in it (empty when `value` is null), or `None`.
/// Built only for the null found: every agent checks every configuration at every render.
fn null_below(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => Some(String::new()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_below(v).map(|below| format!("[{i}]{below}"))),
        serde_json::Value::Object(fields) => fields
            .iter()
            .find_map(|(k, v)| null_below(v).map(|below| format!(".{k}{below}"))),
        _ => None,
    }
}

impl IngressDocument {
    /// Its rollout strategy, if it has one.
    pub fn rollout(&self) -> Option<&RolloutStrategy> {
        match self {
            IngressDocument::Ingress(ingress) => ingress.rollout.as_ref(),
            IngressDocument::Opaque { rollout, .. } => rollout.as_ref(),
        }
    }

    /// Parses and validates JSON; errors name the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ValidationError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid("(document)", e.to_string()))?;
        Self::from_value(&value)
    }

    /// Validates an already parsed document, as [`from_json`](Self::from_json) does. It reads
    /// the value where it is: agents check every configuration at every render.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ValidationError> {
        let serde_json::Value::Object(obj) = value else {
            return Err(invalid("(document)", "must be a JSON object"));
        };
        // The kind is read by hand: serde's tagged enums buffer the content and lose the
        // path of errors inside it.
        let kind = match obj.get("kind") {
            Some(serde_json::Value::String(k)) => k.as_str(),
            Some(_) => return Err(invalid("kind", "must be a string")),
            None => {
                return Err(invalid(
                    "kind",
                    "missing: expected \"ingress\" or \"opaque\"",
                ))
            }
        };
        let fields = || obj.iter().filter(|(name, _)| name.as_str() != "kind");
        let doc = match kind {
            "ingress" => {
                for (field, value) in fields() {
                    reject_nulls(value, field)?;
                }
                let rest = || {
                    serde::de::value::MapDeserializer::<_, serde_json::Error>::new(
                        fields().map(|(name, value)| (name.as_str(), value)),
                    )
                };
                // The path-tracking decoder costs more; it only runs again to word a refusal.
                let ingress = match Ingress::deserialize(rest()) {
                    Ok(ingress) => ingress,
                    Err(_) => serde_path_to_error::deserialize(rest()).map_err(|e| {
                        let path = e.path().to_string();
                        let path = if path == "." {
                            "(document)".to_string()
                        } else {
                            path
                        };
                        invalid(path, e.into_inner().to_string())
                    })?,
                };
                IngressDocument::Ingress(ingress)
            }
            "opaque" => {
                let data = match obj.get("data") {
                    Some(serde_json::Value::Object(d)) => d.clone(),
                    Some(_) => return Err(invalid("data", "must be a JSON object")),
                    None => return Err(invalid("data", "missing")),
                };
                let rollout = match obj.get("rollout") {
                    None => None,
                    Some(value) => {
                        reject_nulls(value, "rollout")?;
                        Some(serde_path_to_error::deserialize(value).map_err(|e| {
                            invalid(format!("rollout.{}", e.path()), e.into_inner().to_string())
                        })?)
                    }
                };
                if let Some(extra) = obj
                    .keys()
                    .find(|k| !matches!(k.as_str(), "kind" | "data" | "rollout"))
                {
                    return Err(invalid(
                        extra.clone(),
                        "unknown field (an opaque document has kind, data and rollout)",
                    ));
                }
                IngressDocument::Opaque { data, rollout }
            }
            other => {
                return Err(invalid(
                    "kind",
                    format!("unknown kind {other:?}: expected \"ingress\" or \"opaque\""),
                ))
            }
        };
        doc.validate()?;
        Ok(doc)
    }

    /// Checks every rule a renderer relies on.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(strategy) = self.rollout() {
            strategy.validate("rollout")?;
        }
        let IngressDocument::Ingress(ingress) = self else {
            return Ok(());
        };
        if ingress.virtual_hosts.is_empty() {
            return Err(invalid(
                "virtual_hosts",
                "at least one virtual host is required",
            ));
        }
        let mut hosts = HashSet::new();
        for (i, vh) in ingress.virtual_hosts.iter().enumerate() {
            let at = format!("virtual_hosts[{i}]");
            if !valid_hostname(&vh.hostname) {
                return Err(invalid(
                    format!("{at}.hostname"),
                    format!("{:?} is not a valid host name", vh.hostname),
                ));
            }
            if !hosts.insert(vh.hostname.to_ascii_lowercase()) {
                return Err(invalid(
                    format!("{at}.hostname"),
                    format!("{:?} appears twice", vh.hostname),
                ));
            }
            if let Some(tls) = &vh.tls {
                for (field, value) in [("certificate", &tls.certificate), ("key", &tls.key)] {
                    valid_file_path(value).map_err(|reason| {
                        invalid(format!("{at}.tls.{field}"), format!("{value:?} {reason}"))
                    })?;
                }
            }
            if vh.paths.is_empty() {
                return Err(invalid(
                    format!("{at}.paths"),
                    "at least one path is required",
                ));
            }
            let mut paths = HashSet::new();
            for (j, rule) in vh.paths.iter().enumerate() {
                let at = format!("{at}.paths[{j}]");
                valid_location(&rule.path).map_err(|reason| {
                    invalid(format!("{at}.path"), format!("{:?} {reason}", rule.path))
                })?;
                if !paths.insert(rule.path.as_str()) {
                    return Err(invalid(
                        format!("{at}.path"),
                        format!("{:?} appears twice in this virtual host", rule.path),
                    ));
                }
                match (&rule.service, &rule.backends) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(invalid(
                            at,
                            "exactly one of service and backends is required",
                        ));
                    }
                    (Some(s), None) => {
                        if !ferry_registry::valid_name(s) {
                            return Err(invalid(
                                format!("{at}.service"),
                                format!("{s:?} is not a registry service name"),
                            ));
                        }
                    }
                    (None, Some(backends)) => {
                        if backends.is_empty() {
                            return Err(invalid(
                                format!("{at}.backends"),
                                "at least one backend is required",
                            ));
                        }
                        for (k, b) in backends.iter().enumerate() {
                            if !valid_backend(b) {
                                return Err(invalid(
                                    format!("{at}.backends[{k}]"),
                                    format!("{b:?} is not host:port"),
                                ));
                            }
                        }
                    }
                }
                for (field, value) in [
                    ("connect_timeout_seconds", rule.connect_timeout_seconds),
                    ("read_timeout_seconds", rule.read_timeout_seconds),
                ] {
                    if let Some(v) = value {
                        if !(1..=3600).contains(&v) {
                            return Err(invalid(
                                format!("{at}.{field}"),
                                format!("{v} is outside 1..=3600"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ValidationError {
        IngressDocument::from_json(json.as_bytes()).expect_err("must be refused")
    }

    const GOOD: &str = r#"{"kind":"ingress","virtual_hosts":[{"hostname":"shop.example.com",
        "tls":{"certificate":"/etc/ssl/shop.pem","key":"/etc/ssl/shop.key"},
        "paths":[{"path":"/","service":"shop","read_timeout_seconds":30},
                 {"path":"/static","backends":["10.0.0.5:8080","[::1]:81"]}]}]}"#;

    #[test]
    fn accepts_typed_and_opaque_documents() {
        let doc = IngressDocument::from_json(GOOD.as_bytes()).expect("valid");
        let round = serde_json::to_vec(&doc).expect("serialise");
        assert_eq!(IngressDocument::from_json(&round).expect("round trip"), doc);
        let opaque = IngressDocument::from_json(br#"{"kind":"opaque","data":{"anything":[1,2]}}"#)
            .expect("opaque");
        assert!(matches!(opaque, IngressDocument::Opaque { .. }));
    }

    #[test]
    fn wave_sizes_grow_and_end_with_every_agent() {
        let strategy = |waves: serde_json::Value| -> RolloutStrategy {
            serde_json::from_value(serde_json::json!({ "waves": waves })).expect("a strategy")
        };
        let s = strategy(serde_json::json!([1, "50%", "100%"]));
        assert_eq!(s.sizes(6), vec![1, 3, 6]);
        assert_eq!(s.sizes(1), vec![1]);
        assert_eq!(s.sizes(0), Vec::<usize>::new());
        assert_eq!(strategy(serde_json::json!(["25%"])).sizes(10), vec![3, 10]);
        assert_eq!(strategy(serde_json::json!([5, 2])).sizes(4), vec![4]);
        let doc = |rollout: &str| {
            IngressDocument::from_json(
                format!(r#"{{"kind":"opaque","data":{{}},"rollout":{rollout}}}"#).as_bytes(),
            )
        };
        assert!(doc(r#"{"waves":[1,"50%"],"bake_seconds":30,"on_failure":"halt"}"#).is_ok());
        assert_eq!(
            doc(r#"{"waves":[]}"#).map_err(|e| e.path).err().as_deref(),
            Some("rollout.waves")
        );
        assert_eq!(
            doc(r#"{"waves":[1,"150%"]}"#)
                .map_err(|e| e.path)
                .err()
                .as_deref(),
            Some("rollout.waves[1]")
        );
        assert_eq!(
            doc(r#"{"waves":[0]}"#).map_err(|e| e.path).err().as_deref(),
            Some("rollout.waves[0]")
        );
        assert!(doc(r#"{"waves":[1],"on_failure":"panic"}"#).is_err());
        assert!(doc("null").is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(
            err(&GOOD.replace("\"path\":\"/static\"", "\"path\":\"static\"")).path,
            "virtual_hosts[0].paths[1].path"
        );
        assert_eq!(
            err(&GOOD.replace("10.0.0.5:8080", "10.0.0.5")).path,
            "virtual_hosts[0].paths[1].backends[0]"
        );
        assert_eq!(
            err(&GOOD.replace("shop.example.com", "shop_example")).path,
            "virtual_hosts[0].hostname"
        );
        assert_eq!(
            err(&GOOD.replace("\"read_timeout_seconds\":30", "\"read_timeout_seconds\":0")).path,
            "virtual_hosts[0].paths[0].read_timeout_seconds"
        );
        assert_eq!(
            err(&GOOD.replace("\"service\":\"shop\",", "")).path,
            "virtual_hosts[0].paths[0]"
        );
        assert_eq!(
            err(&GOOD.replace("/etc/ssl/shop.key", "shop.key")).path,
            "virtual_hosts[0].tls.key"
        );
        let typo = err(&GOOD.replace("\"hostname\"", "\"hostnme\""));
        assert_eq!(typo.path, "virtual_hosts[0].hostnme");
        assert!(typo.reason.contains("hostnme"), "{typo}");
        let wrong_type = err(&GOOD.replace(
            "\"read_timeout_seconds\":30",
            "\"read_timeout_seconds\":\"30\"",
        ));
        assert_eq!(
            wrong_type.path,
            "virtual_hosts[0].paths[0].read_timeout_seconds"
        );
        assert_eq!(
            err(r#"{"kind":"ingress","virtual_hosts":[]}"#).path,
            "virtual_hosts"
        );
        assert_eq!(err(r#"{"kind":"nginx"}"#).path, "kind");
        assert_eq!(err(r#"{"virtual_hosts":[]}"#).path, "kind");
        assert_eq!(err(r#"{"kind":"opaque","data":[1]}"#).path, "data");
        assert_eq!(
            err(&GOOD.replace(
                "\"read_timeout_seconds\":30",
                "\"read_timeout_seconds\":null"
            ))
            .path,
            "virtual_hosts[0].paths[0].read_timeout_seconds"
        );
        assert_eq!(
            err(&GOOD.replace(
                "\"tls\":{\"certificate\":\"/etc/ssl/shop.pem\",\"key\":\"/etc/ssl/shop.key\"}",
                "\"tls\":null"
            ))
            .path,
            "virtual_hosts[0].tls"
        );
        let extra = err(&GOOD.replacen("{", "{\"extra\":1,", 1));
        assert_eq!(extra.path, "extra");
        assert!(extra.reason.contains("unknown field"), "{extra}");
        let missing = err(r#"{"kind":"ingress"}"#);
        assert_eq!(missing.path, "(document)");
        assert!(missing.reason.contains("virtual_hosts"), "{missing}");
        assert_eq!(
            err(r#"{"kind":"opaque","data":{},"extra":1}"#).path,
            "extra"
        );
        // Opaque data is the user's: nulls in it are values.
        assert!(IngressDocument::from_json(br#"{"kind":"opaque","data":{"a":null}}"#).is_ok());
        assert_eq!(err("not json").path, "(document)");
    }
}
