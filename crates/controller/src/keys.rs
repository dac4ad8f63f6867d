//! The key layout under the root prefix (default `/ingress`).

/// The default root prefix.
pub const DEFAULT_ROOT: &str = "/ingress";

/// Builds keys under one root prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_ROOT)
    }
}

/// Why a name or a root prefix cannot be part of the key layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?}: {reason}")]
pub struct KeyError {
    /// What was given (`environment`, `agent name`, `root prefix`).
    pub what: &'static str,
    /// The value as given.
    pub value: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

/// The characters of a name: what is safe in a key segment, a file name and a log line.
fn name_chars(value: &str, extra: &[char]) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c))
}

/// The rule of [`validate_env`] as a regular expression (the OpenAPI document declares it).
pub const ENV_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// An environment name: letters, digits, `-` and `_`, at most 64.
pub fn validate_env(env: &str) -> Result<(), KeyError> {
    if env.is_empty() || env.len() > 64 || !name_chars(env, &[]) {
        return Err(KeyError {
            what: "environment",
            value: env.to_string(),
            reason: "environment names use letters, digits, - and _ (at most 64)",
        });
    }
    Ok(())
}

/// An agent's or controller's name: letters, digits, `-`, `_` and `.`, at most 253 (a host
/// name fits).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.len() > 253 || !name_chars(name, &['.']) {
        return Err(KeyError {
            what,
            value: name.to_string(),
            reason: "names use letters, digits, -, _ and . (at most 253)",
        });
    }
    Ok(())
}

impl Keys {
    /// Keys under `root`, which must be an absolute key prefix like `/ingress` (segments of
    /// letters, digits, `-`, `_` and `.`); a trailing `/` is ignored.
    pub fn parse(root: &str) -> Result<Self, KeyError> {
        let trimmed = root.trim_end_matches('/');
        let ok = root.starts_with('/')
            && !trimmed.is_empty()
            && trimmed[1..]
                .split('/')
                .all(|segment| !segment.is_empty() && name_chars(segment, &['.']));
        if !ok {
            return Err(KeyError {
                what: "root prefix",
                value: root.to_string(),
                reason: "must be an absolute key prefix like /ingress (segments of letters, digits, -, _ and .)",
            });
        }
        Ok(Self::new(root))
    }

    /// The root prefix, without a trailing `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/agent`: where agents announce themselves (the registry prefix).
    pub fn agent_registry(&self) -> String {
        format!("{}/agent", self.root)
    }

    /// `<root>/controller`: where controllers announce themselves.
    pub fn controller_registry(&self) -> String {
        format!("{}/controller", self.root)
    }

    /// `<root>/election/<name>`: a leader election among controllers.
    pub fn election(&self, name: &str) -> String {
        format!("{}/election/{name}", self.root)
    }

    /// Keys under `root`.
    pub fn new(root: &str) -> Self {
        Self {
            root: format!("/{}", root.trim_matches('/')),
        }
    }

    /// `<root>/controller/<name>`: a live controller.
    pub fn controller(&self, name: &str) -> String {
        format!("{}/controller/{name}", self.root)
    }

    /// `<root>/agent/<env>/`: the live agents of an environment.
    pub fn agents(&self, env: &str) -> String {
        format!("{}/agent/{env}/", self.root)
    }

    /// `<root>/agent/<env>/<name>`: one live agent.
    pub fn agent(&self, env: &str, name: &str) -> String {
        format!("{}/agent/{env}/{name}", self.root)
    }

    /// `<root>/ingress_config/`: every configuration of every environment.
    pub fn all_configs(&self) -> String {
        format!("{}/ingress_config/", self.root)
    }

    /// `<root>/ingress_config/<env>/`: every configuration of an environment.
    pub fn configs(&self, env: &str) -> String {
        format!("{}/ingress_config/{env}/", self.root)
    }

    /// `<root>/ingress_config/<env>/<uuid>`: one configuration.
    pub fn config(&self, env: &str, id: &str) -> String {
        format!("{}/ingress_config/{env}/{id}", self.root)
    }

    /// `<root>/ingress_config_status/<env>/<uuid>/`: every agent's result for a configuration.
    pub fn statuses(&self, env: &str, id: &str) -> String {
        format!("{}/ingress_config_status/{env}/{id}/", self.root)
    }

    /// `<root>/ingress_config_status/<env>/<uuid>/<agent>`: one agent's result.
    pub fn status(&self, env: &str, id: &str, agent: &str) -> String {
        format!("{}/ingress_config_status/{env}/{id}/{agent}", self.root)
    }

    /// `<root>/ingress_config_wave/`: every agent's wave targets.
    pub fn all_wave_targets(&self) -> String {
        format!("{}/ingress_config_wave/", self.root)
    }

    /// `<root>/ingress_config_wave/<env>/<agent>/`: the versions one agent runs instead of
    /// its environment's, while a rollout in waves has reached it.
    pub fn wave_targets(&self, env: &str, agent: &str) -> String {
        format!("{}/ingress_config_wave/{env}/{agent}/", self.root)
    }

    /// `<root>/ingress_config_wave/<env>/<agent>/<uuid>`: one of them.
    pub fn wave_target(&self, env: &str, agent: &str, id: &str) -> String {
        format!("{}/ingress_config_wave/{env}/{agent}/{id}", self.root)
    }

    /// `<root>/ingress_rollout/`: every rollout in waves.
    pub fn all_rollouts(&self) -> String {
        format!("{}/ingress_rollout/", self.root)
    }

    /// `<root>/ingress_rollout/<env>/<uuid>`: a configuration's rollout in waves (the
    /// controller's progress, read back after a restart).
    pub fn rollout(&self, env: &str, id: &str) -> String {
        format!("{}/ingress_rollout/{env}/{id}", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        let k = Keys::default();
        assert_eq!(k.controller("c1"), "/ingress/controller/c1");
        assert_eq!(k.agent("prod", "a1"), "/ingress/agent/prod/a1");
        assert_eq!(k.config("prod", "u"), "/ingress/ingress_config/prod/u");
        assert_eq!(
            k.status("prod", "u", "a1"),
            "/ingress/ingress_config_status/prod/u/a1"
        );
        assert_eq!(
            k.wave_target("prod", "a1", "u"),
            "/ingress/ingress_config_wave/prod/a1/u"
        );
        assert_eq!(k.rollout("prod", "u"), "/ingress/ingress_rollout/prod/u");
        assert_eq!(
            Keys::new("custom/").configs("dev"),
            "/custom/ingress_config/dev/"
        );
    }

    #[test]
    fn root_prefixes_and_names_are_checked() {
        assert_eq!(Keys::parse("/ingress/").unwrap(), Keys::default());
        assert_eq!(
            Keys::parse("/a/b.c").unwrap().agent_registry(),
            "/a/b.c/agent"
        );
        for bad in ["ingress", "/", "", "//x", "/a//b", "/a b", "/a\nb"] {
            let err = Keys::parse(bad).unwrap_err();
            assert_eq!(err.what, "root prefix", "{bad}");
        }
        assert!(validate_env("prod_eu-1").is_ok());
        for bad in ["", "prod.eu", "a/b", "x\n", &"e".repeat(65)] {
            assert!(validate_env(bad).is_err(), "{bad}");
        }
        assert!(validate_name("agent name", "edge-1.dc").is_ok());
        for bad in ["", "a/b", "a\n}", "a b"] {
            assert!(validate_name("agent name", bad).is_err(), "{bad}");
        }
    }
}
