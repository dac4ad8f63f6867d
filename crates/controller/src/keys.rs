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

impl Keys {
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
            Keys::new("custom/").configs("dev"),
            "/custom/ingress_config/dev/"
        );
    }
}
