//! What the agent lets into a render. Configurations and registry instances come from the
//! store, which more than the controller can write: each is checked for its context before
//! it can reach nginx.conf. A configuration that fails the controller's own validation is
//! refused (reported as failed, never rendered); a registry instance that is not a
//! well-formed service instance is left out of its upstream and reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_controller::{IngressDocument, PublishedConfig};
use ferry_registry::Instance;
use ferry_runtime::Object;

use crate::stored_config::StoredConfig;

/// A registry entry left out of the render, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedInstance {
    /// The service its key places it in (`<prefix>/<service>/<id>`).
    pub service: String,
    /// Its full key.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A configuration the agent will not render, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedConfig {
    /// Its id (the last segment of its key).
    pub id: String,
    /// The version it claims (0 when it has none).
    pub version: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// The result of checking one render's inputs.
#[derive(Debug, Default)]
pub struct Admission {
    /// Configurations to render.
    pub configs: Vec<Arc<PublishedConfig>>,
    /// Configurations refused (their status says why). Those whose key holds no usable id
    /// cannot be reported and are only logged.
    pub refused: Vec<RefusedConfig>,
    /// Instances to render, by `<service>/<id>`.
    pub instances: BTreeMap<String, Arc<Instance>>,
    /// Instances left out.
    pub skipped: Vec<SkippedInstance>,
}

impl Admission {
    /// What to tell a configuration's status about the instances left out of the services
    /// it routes to (empty when none were).
    pub fn skipped_message(&self, config: &PublishedConfig) -> String {
        let IngressDocument::Ingress(ingress) = &config.document else {
            return String::new();
        };
        let routed: std::collections::BTreeSet<&str> = ingress
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.paths.iter())
            .filter_map(|p| p.service.as_deref())
            .collect();
        let notes: Vec<String> = self
            .skipped
            .iter()
            .filter(|s| routed.contains(s.service.as_str()))
            .map(|s| format!("skipped invalid registry instance {}: {}", s.key, s.reason))
            .collect();
        notes.join("; ")
    }
}

/// A configuration id: the controller's UUIDs (it names nginx upstreams and status keys).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// What the store's copy must agree with: its key, the agent's environment, a version.
fn check_config(key_id: &str, c: &PublishedConfig, env: &str) -> Result<(), String> {
    if c.id != key_id {
        return Err(format!("id {:?} is not the one its key names", c.id));
    }
    if c.env != env {
        return Err(format!("it belongs to environment {:?}", c.env));
    }
    if c.version < 1 {
        return Err(format!("version {} is not a positive number", c.version));
    }
    Ok(())
}

/// Checks every configuration of environment `env` and every instance under
/// `services_prefix`.
pub fn admit(
    env: &str,
    configs: Vec<Object<StoredConfig>>,
    instances: Vec<Object<Instance>>,
    services_prefix: &str,
) -> Admission {
    let mut admission = Admission::default();
    for object in configs {
        let id = object.key.rsplit('/').next().unwrap_or_default();
        if !valid_id(id) {
            tracing::warn!(key = %object.key, "a configuration key without a configuration id; ignored");
            continue;
        }
        let checked = match &object.value.decoded {
            Ok(config) => check_config(id, config, env).map(|()| config.clone()),
            Err(reason) => Err(reason.clone()),
        };
        match checked {
            Ok(config) => admission.configs.push(config),
            Err(reason) => admission.refused.push(RefusedConfig {
                id: id.to_string(),
                version: object.value.version,
                reason: format!("refused by the agent: {reason}"),
            }),
        }
    }
    let base = format!("{}/", services_prefix.trim_end_matches('/'));
    for object in instances {
        let relative = object.key.strip_prefix(&base).unwrap_or(&object.key);
        let (service, id) = relative.split_once('/').unwrap_or((relative, ""));
        let checked =
            if id.contains('/') || service != object.value.service || id != object.value.id {
                Err(format!(
                    "its key does not match its service {:?} and id {:?}",
                    object.value.service, object.value.id
                ))
            } else {
                object.value.validate().map_err(|e| e.to_string())
            };
        match checked {
            Ok(()) => {
                admission
                    .instances
                    .insert(relative.to_string(), object.value);
            }
            Err(reason) => admission.skipped.push(SkippedInstance {
                service: service.to_string(),
                key: object.key.clone(),
                reason,
            }),
        }
    }
    admission
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object<T>(key: &str, value: T) -> Object<T> {
        Object {
            key: key.into(),
            value: Arc::new(value),
            mod_revision: 1,
            create_revision: 1,
        }
    }

    /// The stored value `value`, decoded as the informer decodes it.
    fn stored(value: serde_json::Value) -> StoredConfig {
        StoredConfig::from_json(&value.to_string())
    }

    fn config(id: &str, doc: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "env": "prod", "version": 1,
            "document": serde_json::from_str::<serde_json::Value>(doc).expect("a document"),
            "changed_by": "t", "changed_at": "now",
        })
    }

    const SHOP: &str = r#"{"kind":"ingress","virtual_hosts":[{"hostname":"shop.example.com",
        "paths":[{"path":"/","service":"shop"}]}]}"#;

    #[test]
    fn instances_with_injected_syntax_are_skipped_and_named() {
        let good = Instance::new("shop", "a", "127.0.0.1:9001");
        let evil = Instance::new(
            "shop",
            "b",
            "127.0.0.1:9;\n    }\n    server { listen 127.0.0.1:28081; }\n    upstream x {\n        server 127.0.0.1:9",
        );
        let misplaced = Instance::new("other", "c", "127.0.0.1:9003");
        let admission = admit(
            "prod",
            vec![object(
                "/ingress/ingress_config/prod/u1",
                stored(config("u1", SHOP)),
            )],
            vec![
                object("/services/shop/a", good),
                object("/services/shop/b", evil),
                object("/services/shop/c", misplaced),
            ],
            "/services",
        );
        assert_eq!(admission.instances.keys().collect::<Vec<_>>(), ["shop/a"]);
        assert_eq!(admission.skipped.len(), 2);
        let message = admission.skipped_message(&admission.configs[0]);
        assert!(
            message.contains("/services/shop/b: invalid address"),
            "{message}"
        );
        assert!(
            message.contains("/services/shop/c: its key does not match"),
            "{message}"
        );
    }

    #[test]
    fn configurations_written_around_the_controller_are_refused() {
        let mut bad_path = config("u2", SHOP);
        bad_path["document"]["virtual_hosts"][0]["paths"][0]["path"] =
            "/ { return 200; } location /x".into();
        let mut other_env = config("u3", SHOP);
        other_env["env"] = "staging".into();
        let mut not_a_number = config("u5", SHOP);
        not_a_number["document"]["virtual_hosts"][0]["paths"][0]["read_timeout_seconds"] =
            "30; return 200".into();
        let admission = admit(
            "prod",
            vec![
                object("/c/u1", stored(config("u1", SHOP))),
                object("/c/u2", stored(bad_path)),
                object("/c/u3", stored(other_env)),
                object("/c/u4", stored(config("u1", SHOP))),
                object("/c/u5", stored(not_a_number)),
                object("/c/..", stored(config("..", SHOP))),
            ],
            vec![],
            "/services",
        );
        assert_eq!(admission.configs.len(), 1);
        let reasons: Vec<(&str, &str)> = admission
            .refused
            .iter()
            .map(|r| (r.id.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(
            reasons[0].1.contains("virtual_hosts[0].paths[0].path"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].1.contains("environment \"staging\""),
            "{reasons:?}"
        );
        assert!(
            reasons[2].1.contains("not the one its key names"),
            "{reasons:?}"
        );
        assert_eq!(reasons[3].0, "u5");
        assert!(
            reasons[3].1.contains("read_timeout_seconds: invalid type"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_configuration_without_a_document_or_with_odd_fields_is_refused_and_named() {
        let mut no_document = config("u1", SHOP);
        no_document.as_object_mut().map(|o| o.remove("document"));
        let mut text_version = config("u2", SHOP);
        text_version["version"] = "2".into();
        let mut null_inside = config("u3", SHOP);
        null_inside["document"]["virtual_hosts"][0]["tls"] = serde_json::Value::Null;
        let admission = admit(
            "prod",
            vec![
                object("/c/u1", stored(no_document)),
                object("/c/u2", stored(text_version)),
                object("/c/u3", stored(null_inside)),
            ],
            vec![],
            "/services",
        );
        assert!(admission.configs.is_empty());
        let reasons: Vec<&str> = admission
            .refused
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert!(
            reasons[0].contains("missing field `document`"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("version: invalid type"), "{reasons:?}");
        assert!(reasons[2].contains("virtual_hosts[0].tls"), "{reasons:?}");
    }
}
