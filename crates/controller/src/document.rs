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
    },
}

/// Virtual hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// The virtual hosts, each with its paths.
    pub virtual_hosts: Vec<VirtualHost>,
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
    match value {
        serde_json::Value::Null => {
            Err(invalid(at, "null is not a value here: leave the field out"))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| reject_nulls(v, &format!("{at}[{i}]"))),
        serde_json::Value::Object(fields) => fields
            .iter()
            .try_for_each(|(k, v)| reject_nulls(v, &format!("{at}.{k}"))),
        _ => Ok(()),
    }
}

impl IngressDocument {
    /// Parses and validates JSON; errors name the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ValidationError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid("(document)", e.to_string()))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err(invalid("(document)", "must be a JSON object"));
        };
        // The kind is read by hand: serde's tagged enums buffer the content and lose the
        // path of errors inside it.
        let kind = match obj.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(_) => return Err(invalid("kind", "must be a string")),
            None => {
                return Err(invalid(
                    "kind",
                    "missing: expected \"ingress\" or \"opaque\"",
                ))
            }
        };
        let doc = match kind.as_str() {
            "ingress" => {
                for (field, value) in &obj {
                    reject_nulls(value, field)?;
                }
                let ingress: Ingress = serde_path_to_error::deserialize(serde_json::Value::Object(
                    obj,
                ))
                .map_err(|e| {
                    let path = e.path().to_string();
                    let path = if path == "." {
                        "(document)".to_string()
                    } else {
                        path
                    };
                    invalid(path, e.into_inner().to_string())
                })?;
                IngressDocument::Ingress(ingress)
            }
            "opaque" => {
                let data = match obj.remove("data") {
                    Some(serde_json::Value::Object(d)) => d,
                    Some(_) => return Err(invalid("data", "must be a JSON object")),
                    None => return Err(invalid("data", "missing")),
                };
                if let Some(extra) = obj.keys().next() {
                    return Err(invalid(
                        extra.clone(),
                        "unknown field (an opaque document has kind and data)",
                    ));
                }
                IngressDocument::Opaque { data }
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
        // Opaque data is the user's: nulls in it are values.
        assert!(IngressDocument::from_json(br#"{"kind":"opaque","data":{"a":null}}"#).is_ok());
        assert_eq!(err("not json").path, "(document)");
    }
}
