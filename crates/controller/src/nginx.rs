//! The built-in nginx template and the keys it renders from. One place for both of its
//! users: the agent, which installs the result, and the controller's pre-flight check,
//! which renders the same configuration set and only checks it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_registry::Instance;
use ferry_render::TemplateResource;

use crate::publish::PublishedConfig;

/// The built-in template (Go `text/template` with confd's functions).
pub const NGINX_TEMPLATE: &str = include_str!("nginx.tmpl");

/// What the template needs to know about the host it renders for.
#[derive(Debug, Clone)]
pub struct NginxSite {
    /// The agent's name.
    pub name: String,
    /// Its environment.
    pub env: String,
    /// nginx's prefix (pid, logs, temp paths live under it).
    pub prefix: PathBuf,
    /// `ip:port` of plain HTTP.
    pub listen: String,
    /// `ip:port` of HTTPS.
    pub tls_listen: String,
}

impl NginxSite {
    /// The `/agent/*` keys.
    pub fn pairs(&self) -> BTreeMap<String, String> {
        let mut pairs = BTreeMap::new();
        pairs.insert("/agent/name".to_string(), self.name.clone());
        pairs.insert("/agent/env".to_string(), self.env.clone());
        pairs.insert(
            "/agent/prefix".to_string(),
            self.prefix.display().to_string(),
        );
        pairs.insert("/agent/listen".to_string(), self.listen.clone());
        pairs.insert("/agent/tls_listen".to_string(), self.tls_listen.clone());
        // Redirects name the HTTPS port unless it is the default one.
        let tls_port = self.tls_listen.rsplit(':').next().unwrap_or("443");
        pairs.insert(
            "/agent/tls_port_suffix".to_string(),
            match tls_port {
                "443" => String::new(),
                port => format!(":{port}"),
            },
        );
        pairs
    }
}

/// The key and value a configuration is rendered from.
pub fn config_pair(config: &PublishedConfig) -> (String, String) {
    (
        format!("/configs/{}", config.id),
        serde_json::to_string(config).unwrap_or_default(),
    )
}

/// The key and value of a registry instance (`relative` is `<service>/<id>`).
pub fn instance_pair(relative: &str, instance: &Instance) -> (String, String) {
    (
        format!("/services/{relative}"),
        serde_json::to_string(instance).unwrap_or_default(),
    )
}

/// The resource that renders `nginx.tmpl` (from the caller's template directory) to `dest`,
/// checked with `check_cmd` and reloaded with `reload_cmd`; `file` names the caller in
/// messages.
pub fn template_resource(
    dest: PathBuf,
    check_cmd: Option<String>,
    reload_cmd: Option<String>,
    file: &str,
) -> TemplateResource {
    TemplateResource {
        src: "nginx.tmpl".into(),
        dest,
        keys: vec![],
        prefix: String::new(),
        mode: Some("0644".into()),
        uid: None,
        gid: None,
        owner: None,
        group: None,
        check_cmd,
        reload_cmd,
        wait: None,
        file: PathBuf::from(file),
    }
}
