//! A configuration as the store holds it, decoded and checked once, when it arrives.
//!
//! Every agent decodes every version of its environment's configurations. Going through a
//! `serde_json::Value` first (so that a refusal can name the field) cost the agents about
//! 6 % of a 1,000-agent rollout's CPU: the tree's allocations, a walk for nulls, a decode
//! from the tree, its drop (docs/BENCHMARKS.md, issue 22). A value is now decoded straight
//! from its text into the typed configuration, and the checked decode through the tree
//! runs only where the direct one could disagree with it or fails (to word the refusal).
//!
//! Agents running in one process (`ferry up`'s) receive the same values: the first to
//! decode a value shares its result with the others (a value is a pure function of its
//! text), and the text of the render's `/configs/<id>` pair is written once per decoded
//! configuration, not once per agent and render.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use ferry_controller::{IngressDocument, PublishedConfig};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

/// One stored configuration value: the configuration, or why the agent refuses it.
///
/// Decodes from any JSON text (a value that is JSON but not a configuration becomes a
/// refusal, reported in its status); text that is not JSON fails to decode, and the
/// informer leaves it out. Only `serde_json` can decode it (it keeps the value's text).
#[derive(Debug, Clone)]
pub struct StoredConfig {
    /// The version it claims (0 when it has none).
    pub version: i64,
    /// The configuration, or why it is not one.
    pub decoded: Result<Arc<PublishedConfig>, String>,
}

impl<'de> Deserialize<'de> for StoredConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <&RawValue>::deserialize(deserializer)?;
        Ok(Self::from_json(text.get()))
    }
}

/// Longer values are decoded at every use rather than kept (a configuration is usually a
/// few hundred bytes; this bounds what the memo holds to a few MiB).
const LONGEST_KEPT: usize = 16 * 1024;

/// How many decoded values (and pair texts) are kept; each memo starts over when full.
const KEPT: usize = 256;

/// Recently decoded values, by their text.
static DECODED: LazyLock<parking_lot::Mutex<HashMap<Box<str>, StoredConfig>>> =
    LazyLock::new(Default::default);

/// The render's pair of recently rendered configurations, by the address of the shared
/// configuration (kept alive here, so that no other configuration can take its address).
type PairMemo = HashMap<usize, (Arc<PublishedConfig>, (String, String))>;
static PAIRS: LazyLock<parking_lot::Mutex<PairMemo>> = LazyLock::new(Default::default);

/// The `/configs/<id>` key and value `config` is rendered from (see
/// [`ferry_controller::nginx::config_pair`]), written once per decoded configuration.
pub(crate) fn config_pair(config: &Arc<PublishedConfig>) -> (String, String) {
    let address = Arc::as_ptr(config) as usize;
    if let Some((kept, pair)) = PAIRS.lock().get(&address) {
        if Arc::ptr_eq(kept, config) {
            return pair.clone();
        }
    }
    let pair = ferry_controller::nginx::config_pair(config);
    keep(&mut PAIRS.lock(), address, (config.clone(), pair.clone()));
    pair
}

/// Inserts into a memo of at most `KEPT` entries, starting it over when full.
fn keep<K: std::hash::Hash + Eq, V>(memo: &mut HashMap<K, V>, key: K, value: V) {
    if memo.len() >= KEPT {
        memo.clear();
    }
    memo.insert(key, value);
}

impl StoredConfig {
    /// Decodes the JSON text `text`, or takes the decode of the same text another agent of
    /// this process made.
    pub fn from_json(text: &str) -> Self {
        if let Some(decoded) = DECODED.lock().get(text) {
            return decoded.clone();
        }
        let decoded = Self::decode(text);
        if text.len() <= LONGEST_KEPT {
            keep(&mut DECODED.lock(), text.into(), decoded.clone());
        }
        decoded
    }

    fn decode(text: &str) -> Self {
        if let Some(config) = decode_direct(text) {
            return Self {
                version: config.version,
                decoded: Ok(Arc::new(config)),
            };
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => Self {
                version: value["version"].as_i64().unwrap_or(0),
                decoded: decode_checked(&value),
            },
            Err(e) => Self {
                version: 0,
                decoded: Err(format!("not JSON: {e}")),
            },
        }
    }
}

/// A published configuration's fields around its document, decoded as `D` (its text, or
/// skipped).
#[derive(Deserialize)]
struct Envelope<D> {
    id: String,
    env: String,
    version: i64,
    document: D,
    changed_by: String,
    changed_at: String,
}

impl<D> Envelope<D> {
    /// The configuration of these fields around `document`.
    fn around(self, document: IngressDocument) -> PublishedConfig {
        PublishedConfig {
            id: self.id,
            env: self.env,
            version: self.version,
            document,
            changed_by: self.changed_by,
            changed_at: self.changed_at,
        }
    }
}

/// The typed decode, where it gives what [`decode_checked`] gives: `None` when it fails or
/// when it could accept what the checked decode refuses. Those are: a null anywhere (the
/// document refuses them where the typed fields would take them as absent; an opaque
/// document's data may hold them, and then takes the checked path too), and a value or a
/// document that is a JSON array (serde's derived decoders take a struct's fields in order
/// from one; the checked decode wants objects). Duplicate fields fail here and take the
/// checked path, which keeps the last as a JSON object does.
fn decode_direct(text: &str) -> Option<PublishedConfig> {
    if text.contains("null") || !text.trim_start().starts_with('{') {
        return None;
    }
    let envelope: Envelope<&RawValue> = serde_json::from_str(text).ok()?;
    let document_text = envelope.document.get();
    if !document_text.trim_start().starts_with('{') {
        return None;
    }
    let document: IngressDocument = serde_json::from_str(document_text).ok()?;
    document.validate().ok()?;
    Some(envelope.around(document))
}

/// Decodes a published configuration from its JSON tree: the document through the
/// controller's own parser and validation (its errors name the field), the rest beside it.
fn decode_checked(value: &serde_json::Value) -> Result<Arc<PublishedConfig>, String> {
    let document = value
        .get("document")
        .map(|d| IngressDocument::from_value(d).map_err(|e| e.to_string()))
        .transpose()?;
    // The path-tracking decoder costs more; it only runs again to word a refusal.
    let envelope = match Envelope::<IgnoredAny>::deserialize(value) {
        Ok(envelope) => envelope,
        Err(_) => serde_path_to_error::deserialize::<_, Envelope<IgnoredAny>>(value)
            .map_err(|e| format!("not a published configuration: {}: {}", e.path(), e.inner()))?,
    };
    // Present: the envelope requires it.
    let document = document.ok_or("not a published configuration: no document")?;
    Ok(Arc::new(envelope.around(document)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"{"id":"u1","env":"prod","version":3,"changed_by":"t","changed_at":"now",
        "document":{"kind":"ingress","virtual_hosts":[{"hostname":"shop.example.com",
        "paths":[{"path":"/","service":"shop","read_timeout_seconds":30}]}],
        "rollout":{"waves":[1,"50%"]}}}"#;

    const OPAQUE: &str = r#"{"id":"u2","env":"prod","version":1,"changed_by":"t","changed_at":"now",
        "document":{"kind":"opaque","data":{"a":[1,2],"b":{"c":"d"}}}}"#;

    /// Every way a stored value can differ from a good one, one at a time.
    fn variants() -> Vec<String> {
        let mut out = vec![SHOP.to_string(), OPAQUE.to_string()];
        let replacements: &[(&str, &str)] = &[
            (r#""version":3"#, r#""version":"3""#),
            (r#""version":3"#, r#""version":3.0"#),
            (r#""version":3"#, r#""version":-1"#),
            (r#""version":3"#, r#""version":3,"version":4"#),
            (r#""version":3,"#, ""),
            (r#""env":"prod""#, r#""env":"staging""#),
            (r#""env":"prod""#, r#""env":null"#),
            (r#""changed_by":"t""#, r#""changed_by":"t","extra":true"#),
            (r#""kind":"ingress""#, r#""kind":"Ingress""#),
            (r#""kind":"ingress""#, r#""kind":"opaque""#),
            (r#""kind":"ingress""#, r#""kind":1"#),
            (r#""kind":"ingress","#, ""),
            (
                r#""kind":"ingress""#,
                r#""kind":"ingress","kind":"ingress""#,
            ),
            (
                r#""hostname":"shop.example.com""#,
                r#""hostname":"shop;.com""#,
            ),
            (
                r#""hostname":"shop.example.com""#,
                r#""hostname":"x","hostname":"y.com""#,
            ),
            (r#""path":"/""#, r#""path":"/ { return 200; }""#),
            (
                r#""read_timeout_seconds":30"#,
                r#""read_timeout_seconds":"30""#,
            ),
            (
                r#""read_timeout_seconds":30"#,
                r#""read_timeout_seconds":30.5"#,
            ),
            (
                r#""read_timeout_seconds":30"#,
                r#""read_timeout_seconds":null"#,
            ),
            (
                r#""read_timeout_seconds":30"#,
                r#""read_timeout_seconds":-30"#,
            ),
            (r#""service":"shop""#, r#""service":"shop","surprise":1"#),
            (r#""waves":[1,"50%"]"#, r#""waves":[1,"150%"]"#),
            (r#""waves":[1,"50%"]"#, r#""waves":[]"#),
            (r#""waves":[1,"50%"]"#, r#""waves":[null]"#),
            (r#""rollout":{"waves":[1,"50%"]}"#, r#""rollout":null"#),
            (
                r#""data":{"a":[1,2],"b":{"c":"d"}}"#,
                r#""data":{"a":null}"#,
            ),
            (r#""data":{"a":[1,2],"b":{"c":"d"}}"#, r#""data":[1]"#),
            (
                r#""data":{"a":[1,2],"b":{"c":"d"}}"#,
                r#""data":{"a":1,"a":2}"#,
            ),
            (r#"}}}"#, r#"},"rollout":{"waves":["10%"]}}}"#),
            (r#"}}}"#, r#"},"more":1}}"#),
        ];
        for base in [SHOP, OPAQUE] {
            for (from, to) in replacements {
                if base.contains(from) {
                    out.push(base.replacen(from, to, 1));
                }
            }
        }
        // Structs as arrays, which serde's derived decoders take field by field.
        let envelope = |document: &str| {
            format!(
                r#"{{"id":"u1","env":"prod","version":3,"changed_by":"t","changed_at":"now","document":{document}}}"#
            )
        };
        out.push(envelope(r#"["opaque",{}]"#));
        out.push(envelope(
            r#"["ingress",[{"hostname":"shop.example.com","paths":[{"path":"/"}]}]]"#,
        ));
        out.push(envelope(
            r#"{"kind":"ingress","virtual_hosts":[["shop.example.com",[{"path":"/"}]]]}"#,
        ));
        out.push(r#"["u1","prod",3,{"kind":"opaque","data":{}},"t","now"]"#.to_string());
        out.push("17".to_string());
        out.push(r#""text""#.to_string());
        out
    }

    #[test]
    fn the_direct_decode_gives_what_the_checked_decode_gives() {
        let mut direct = 0;
        for text in variants() {
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let checked = decode_checked(&value);
            if let Some(config) = decode_direct(&text) {
                direct += 1;
                assert_eq!(
                    checked.as_deref(),
                    Ok::<_, &String>(&config),
                    "the direct decode accepted what the checked one gives otherwise: {text}"
                );
            }
            let stored = StoredConfig::from_json(&text);
            assert_eq!(stored.decoded, checked, "{text}");
            assert_eq!(
                stored.version,
                value["version"].as_i64().unwrap_or(0),
                "{text}"
            );
        }
        // Most good values take the direct path (the test is not vacuous).
        assert!(direct >= 6, "only {direct} values decoded directly");
    }

    #[test]
    fn refusals_name_the_field_and_text_that_is_not_json_does_not_decode() {
        let stored: StoredConfig = serde_json::from_str(&SHOP.replace(
            r#""read_timeout_seconds":30"#,
            r#""read_timeout_seconds":"30""#,
        ))
        .expect("JSON decodes");
        let reason = stored.decoded.expect_err("a refusal");
        assert!(
            reason.contains("read_timeout_seconds: invalid type"),
            "{reason}"
        );
        assert_eq!(stored.version, 3);
        assert!(serde_json::from_str::<StoredConfig>("not json").is_err());
    }

    #[test]
    fn agents_of_one_process_share_a_decode_and_its_pair_text() {
        let first = StoredConfig::from_json(SHOP);
        let second = StoredConfig::from_json(SHOP);
        let (Ok(a), Ok(b)) = (&first.decoded, &second.decoded) else {
            panic!("the shop configuration decodes: {first:?}");
        };
        assert!(Arc::ptr_eq(a, b), "the same text: one shared decode");
        assert_eq!(config_pair(a), ferry_controller::nginx::config_pair(a));
        assert_eq!(config_pair(b), ferry_controller::nginx::config_pair(a));
        // Another text is decoded on its own, and its pair says so.
        let newer = StoredConfig::from_json(&SHOP.replace(r#""version":3"#, r#""version":4"#));
        let Ok(c) = &newer.decoded else {
            panic!("version 4 decodes: {newer:?}");
        };
        assert_eq!((newer.version, c.version), (4, 4));
        assert!(!Arc::ptr_eq(a, c));
        assert_eq!(config_pair(c), ferry_controller::nginx::config_pair(c));
        assert_ne!(config_pair(c).1, config_pair(a).1);
    }
}
