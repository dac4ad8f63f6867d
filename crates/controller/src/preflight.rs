//! The pre-flight check: before a change is committed, the controller renders its
//! environment's configuration set with the change through the agents' template and runs
//! nginx's own check (`nginx -t`) on it, as ingress-nginx's admission webhook does. A change
//! nginx refuses never reaches SQL, the store or any agent.
//!
//! What the controller cannot know is left to the agents: TLS certificate and key paths name
//! files on the agents' hosts, so the check renders them with a certificate of its own (the
//! directives and their syntax are checked, the files are not); an agent whose host lacks
//! one blames that configuration alone (`ferry_agent::blame`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use ferry_render::{render_resource, KvSnapshot, RenderError, RenderOptions};

use crate::document::IngressDocument;
use crate::nginx::{self, NginxSite};
use crate::publish::PublishedConfig;

/// When the check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreflightMode {
    /// Whenever nginx is installed on the controller's host.
    #[default]
    Auto,
    /// Always; the controller refuses to start without nginx.
    On,
    /// Never.
    Off,
}

impl FromStr for PreflightMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?}: expected auto, on or off")),
        }
    }
}

/// How the check is set up.
#[derive(Debug, Clone)]
pub struct PreflightConfig {
    /// When it runs.
    pub mode: PreflightMode,
    /// The nginx binary.
    pub nginx: PathBuf,
    /// The agents' template, when they use their own (`ferry agent --template`).
    pub template: Option<PathBuf>,
}

impl Default for PreflightConfig {
    fn default() -> Self {
        Self {
            mode: PreflightMode::Auto,
            nginx: PathBuf::from("/usr/sbin/nginx"),
            template: None,
        }
    }
}

/// Why the check could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// `on` without nginx.
    #[error("--preflight on needs nginx at {0} (apt-get install nginx-light)")]
    NoNginx(PathBuf),
    /// The template or the work directory.
    #[error("pre-flight setup: {0}")]
    Setup(String),
}

/// nginx refused the environment's configuration with the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightRefusal {
    /// nginx's message (or the template's error).
    pub message: String,
}

/// A ready check: a work directory with the template and a stand-in certificate.
pub struct Preflight {
    dir: tempfile::TempDir,
    nginx: PathBuf,
    certificate: String,
    key: String,
    /// One check at a time: they share the work directory, and nginx is quick.
    running: tokio::sync::Mutex<()>,
}

fn setup_error(what: &str, path: &Path, e: impl std::fmt::Display) -> PreflightError {
    PreflightError::Setup(format!("{what} {}: {e}", path.display()))
}

impl Preflight {
    /// The check `config` asks for; `None` when it is off (or `auto` without nginx).
    pub fn start(config: &PreflightConfig) -> Result<Option<Arc<Self>>, PreflightError> {
        let has_nginx = config.nginx.is_file();
        match (config.mode, has_nginx) {
            (PreflightMode::Off, _) => return Ok(None),
            (PreflightMode::Auto, false) => {
                tracing::info!(nginx = %config.nginx.display(), "nginx is not installed: changes are not checked before they are accepted");
                return Ok(None);
            }
            (PreflightMode::On, false) => {
                return Err(PreflightError::NoNginx(config.nginx.clone()))
            }
            _ => {}
        }
        let template = match &config.template {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| setup_error("reading the template", path, e))?,
            None => nginx::NGINX_TEMPLATE.to_string(),
        };
        let dir = tempfile::Builder::new()
            .prefix("ferry-preflight-")
            .tempdir()
            .map_err(|e| PreflightError::Setup(format!("creating a work directory: {e}")))?;
        for sub in ["templates", "conf", "logs", "tmp"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path).map_err(|e| setup_error("creating", &path, e))?;
        }
        let path = dir.path().join("templates/nginx.tmpl");
        std::fs::write(&path, template).map_err(|e| setup_error("writing", &path, e))?;
        let stand_in =
            rcgen::generate_simple_self_signed(vec!["preflight.ferry.invalid".into()])
                .map_err(|e| PreflightError::Setup(format!("a stand-in certificate: {e}")))?;
        let certificate = dir.path().join("stand-in.pem");
        let key = dir.path().join("stand-in.key");
        std::fs::write(&certificate, stand_in.cert.pem())
            .map_err(|e| setup_error("writing", &certificate, e))?;
        std::fs::write(&key, stand_in.signing_key.serialize_pem())
            .map_err(|e| setup_error("writing", &key, e))?;
        Ok(Some(Arc::new(Self {
            nginx: config.nginx.clone(),
            certificate: certificate.display().to_string(),
            key: key.display().to_string(),
            dir,
            running: tokio::sync::Mutex::new(()),
        })))
    }

    /// Checks `env`'s live configurations (`others`, the changed one's current version
    /// left out) together with `change`. The change is refused when nginx refuses the set
    /// with it but took the set without it, or refuses the change on its own; a set that
    /// already failed without the change does not hold the change back.
    pub async fn check(
        &self,
        env: &str,
        others: &[PublishedConfig],
        change: &PublishedConfig,
    ) -> Result<(), PreflightRefusal> {
        let _one_at_a_time = self.running.lock().await;
        let mut with_change: Vec<&PublishedConfig> =
            others.iter().filter(|c| c.id != change.id).collect();
        let without_change = with_change.clone();
        with_change.push(change);
        let Err(refused) = self.render(env, &with_change).await else {
            return Ok(());
        };
        if self.render(env, &without_change).await.is_ok() {
            return Err(refused);
        }
        match self.render(env, &[change]).await {
            Ok(()) => {
                tracing::warn!(env, "the environment's configuration fails nginx's check without this change too; accepting the change, which passes on its own");
                Ok(())
            }
            Err(alone) => Err(alone),
        }
    }

    async fn render(&self, env: &str, set: &[&PublishedConfig]) -> Result<(), PreflightRefusal> {
        let site = NginxSite {
            name: "preflight".into(),
            env: env.into(),
            prefix: self.dir.path().to_path_buf(),
            listen: "127.0.0.1:8080".into(),
            tls_listen: "127.0.0.1:8443".into(),
        };
        let mut pairs = site.pairs();
        pairs.extend(
            set.iter()
                .map(|c| nginx::config_pair(&self.with_stand_in_files(c))),
        );
        let check = format!(
            "{} -t -q -p {} -c {{{{.src}}}}",
            self.nginx.display(),
            self.dir.path().display()
        );
        let resource = nginx::template_resource(
            self.dir.path().join("conf/nginx.conf"),
            Some(check),
            None,
            "ferry-controller-preflight",
        );
        let options = RenderOptions {
            check_only: true,
            ..RenderOptions::default()
        };
        let snapshot = Arc::new(KvSnapshot { pairs, revision: 0 });
        render_resource(
            &resource,
            &self.dir.path().join("templates"),
            snapshot,
            options,
        )
        .await
        .map(|_| ())
        .map_err(|e| PreflightRefusal {
            message: match e {
                RenderError::Check { output, .. } => output.trim().to_string(),
                other => other.to_string(),
            },
        })
    }

    /// `config` with its TLS files replaced by the stand-in: they are files on the agents'
    /// hosts, not here.
    fn with_stand_in_files(&self, config: &PublishedConfig) -> PublishedConfig {
        let mut config = config.clone();
        if let IngressDocument::Ingress(ingress) = &mut config.document {
            for vh in &mut ingress.virtual_hosts {
                if let Some(tls) = &mut vh.tls {
                    tls.certificate = self.certificate.clone();
                    tls.key = self.key.clone();
                }
            }
        }
        config
    }
}
