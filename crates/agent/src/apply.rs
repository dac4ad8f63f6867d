//! The agent's cycle: after every burst of changes, admit what the store holds, render it
//! into one nginx configuration, check and reload, and report each configuration's result.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_client::Client;
use ferry_controller::api::AgentStatus;
use ferry_controller::keys::Keys;
use ferry_controller::nginx;
use ferry_controller::{IngressDocument, PublishedConfig};
use ferry_registry::Instance;
use ferry_render::TemplateResource;
use ferry_render::{
    install, render_text, KvSnapshot, LastInstall, Outcome, RenderOptions, TemplateCache,
};
use ferry_runtime::{Event, Informer};

use crate::blame::{self, RenderSet};
use crate::stored_config::StoredConfig;
use crate::{
    admission, view, AgentConfig, AgentMetrics, QUIET, SETTLE_MAX, TARGET_DELETED_SETTLE,
    VIEW_READ_TIMEOUT, VIEW_RETRY,
};

/// Everything one agent's render-check-report cycle needs.
pub(crate) struct Applier {
    pub(crate) client: Client,
    pub(crate) config: AgentConfig,
    pub(crate) keys: Keys,
    pub(crate) configs: Informer<StoredConfig>,
    /// Versions this agent runs ahead of its environment (a rollout in waves reached it).
    pub(crate) wave_targets: Informer<StoredConfig>,
    pub(crate) services: Informer<Instance>,
    pub(crate) templates: PathBuf,
    pub(crate) metrics: Arc<AgentMetrics>,
    /// What was last reported per configuration, so a status is written only on change.
    pub(crate) reported: HashMap<String, (i64, bool, String)>,
    /// The refusals already logged.
    pub(crate) warned: std::collections::HashSet<String>,
    /// Per configuration, the version last installed (the one to fall back to when a new
    /// version is to blame for a failing check).
    pub(crate) last_good: HashMap<String, Arc<PublishedConfig>>,
    /// The nginx template as last parsed (re-parsed only when its file changes).
    pub(crate) template: parking_lot::Mutex<TemplateCache>,
    /// What the agent last installed as its nginx.conf.
    pub(crate) installed: LastInstall,
    /// The agent's own keys of the template (`nginx::NginxSite::pairs`).
    pub(crate) site: BTreeMap<String, String>,
    /// Its nginx.conf and the commands that check and reload it.
    pub(crate) resource: TemplateResource,
    /// The targets cache's revision when a target deletion was last seen: the
    /// configurations rendered must be at least this recent (see `view`).
    pub(crate) targets_deleted_at: i64,
}

/// The agent's nginx.conf from a set of configurations (and the agent's own keys and the
/// admitted registry instances).
struct NginxRender<'a> {
    site: &'a BTreeMap<String, String>,
    instances: Vec<(String, String)>,
    revision: i64,
    templates: &'a Path,
    resource: &'a TemplateResource,
    template: &'a parking_lot::Mutex<TemplateCache>,
    installed: &'a LastInstall,
}

impl blame::RenderSet for NginxRender<'_> {
    async fn render(
        &self,
        set: &[Arc<PublishedConfig>],
        check_only: bool,
    ) -> Result<Outcome, ferry_render::RenderError> {
        let mut pairs = self.site.clone();
        pairs.extend(self.instances.iter().cloned());
        pairs.extend(set.iter().map(crate::stored_config::config_pair));
        let snapshot = KvSnapshot {
            pairs,
            revision: self.revision,
        };
        let options = RenderOptions {
            check_only,
            ..RenderOptions::default()
        };
        let rendered = render_text(
            self.resource,
            self.templates,
            Arc::new(snapshot),
            options.nameserver,
            &mut self.template.lock(),
        )?;
        install(self.resource, rendered, options, Some(self.installed)).await
    }
}

impl Applier {
    /// Renders after every burst of changes, until the informers stop.
    pub(crate) async fn run(mut self) {
        self.configs.wait_for_sync().await;
        self.wave_targets.wait_for_sync().await;
        self.services.wait_for_sync().await;
        // The two lists were taken at different revisions: a rollout completed between them
        // would show neither its target nor its new version, so the first render reads the
        // configurations at least as recent as the targets' list.
        self.targets_deleted_at = self.wave_targets.cache().revision();
        let mut config_events = self.configs.subscribe();
        let mut wave_events = self.wave_targets.subscribe();
        let mut service_events = self.services.subscribe();
        // Set while the last render could not know the configurations (see `view`).
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            // Whatever changed, render everything once the burst is over.
            let mut target_deleted = tokio::select! {
                Some(_) = config_events.recv() => false,
                Some(e) = wave_events.recv() => matches!(e, Event::Deleted(_)),
                Some(_) = service_events.recv() => false,
                _ = sleep_until_some(retry), if retry.is_some() => false,
                else => return,
            };
            let started = tokio::time::Instant::now();
            let settled = started + SETTLE_MAX;
            let target_floor = started + TARGET_DELETED_SETTLE;
            loop {
                let floor = if target_deleted {
                    target_floor
                } else {
                    started
                };
                let quiet = (tokio::time::Instant::now() + QUIET)
                    .max(floor)
                    .min(settled);
                tokio::select! {
                    Some(_) = config_events.recv() => {}
                    Some(e) = wave_events.recv() => {
                        target_deleted |= matches!(e, Event::Deleted(_));
                    }
                    Some(_) = service_events.recv() => {}
                    _ = tokio::time::sleep_until(quiet) => break,
                }
            }
            // What arrived meanwhile is in the caches this render reads.
            while config_events.try_recv().is_ok() || service_events.try_recv().is_ok() {}
            while let Ok(e) = wave_events.try_recv() {
                target_deleted |= matches!(e, Event::Deleted(_));
            }
            if target_deleted {
                self.targets_deleted_at = self.wave_targets.cache().revision();
            }
            retry = match self.apply().await {
                Rendered::Done => None,
                Rendered::Postponed | Rendered::Unreported => {
                    Some(tokio::time::Instant::now() + VIEW_RETRY)
                }
            };
        }
    }

    /// One render of everything admitted, then the status of each configuration; postponed,
    /// with nothing changed, while the configurations at the targets' revision are unknown.
    async fn apply(&mut self) -> Rendered {
        let Self {
            client,
            config,
            keys,
            configs,
            wave_targets,
            services,
            templates,
            metrics,
            reported,
            warned,
            last_good,
            template,
            installed,
            site,
            resource,
            targets_deleted_at,
        } = self;
        let (environment, revision) = match view::configurations_at(
            client,
            &keys.configs(&config.env),
            &configs.cache(),
            *targets_deleted_at,
            VIEW_READ_TIMEOUT,
        )
        .await
        {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(agent = %config.name, error = %e, retry_in = ?VIEW_RETRY, "the configurations after a wave target's deletion are unknown; keeping what is installed");
                return Rendered::Postponed;
            }
        };
        // A wave target replaces the environment's version of the same configuration.
        let mut effective: BTreeMap<String, _> = BTreeMap::new();
        for object in environment.into_iter().chain(wave_targets.cache().list()) {
            let id = object
                .key
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            effective.insert(id, object);
        }
        let admission = admission::admit(
            &config.env,
            effective.into_values().collect(),
            services.cache().list(),
            &config.services_prefix,
        );
        metrics.observe(&admission);
        // Each refusal is logged once, not at every render while it stays in the store.
        let mut now_warned = std::collections::HashSet::new();
        for skipped in &admission.skipped {
            let entry = format!("{}\0{}", skipped.key, skipped.reason);
            if !warned.contains(&entry) {
                tracing::warn!(agent = %config.name, key = %skipped.key, reason = %skipped.reason, "invalid registry instance left out of its upstream");
            }
            now_warned.insert(entry);
        }
        for refused in &admission.refused {
            let entry = format!("{}\0{}\0{}", refused.id, refused.version, refused.reason);
            if !warned.contains(&entry) {
                tracing::warn!(agent = %config.name, config = %refused.id, reason = %refused.reason, "configuration refused");
            }
            now_warned.insert(entry);
        }
        *warned = now_warned;
        let current = &admission.configs;
        let renderer = NginxRender {
            site,
            instances: admission
                .instances
                .iter()
                .map(|(relative, instance)| nginx::instance_pair(relative, instance))
                .collect(),
            revision,
            templates,
            resource,
            template,
            installed,
        };
        let mut outcome = renderer.render(current, false).await;
        let mut blamed = BTreeMap::new();
        let mut installed: Vec<Arc<PublishedConfig>> = current.clone();
        if let Err(ferry_render::RenderError::Check { .. }) = &outcome {
            let verdict = blame::blame(&renderer, current, last_good).await;
            if !verdict.blamed.is_empty() {
                tracing::warn!(agent = %config.name, blamed = ?verdict.blamed.keys().collect::<Vec<_>>(), "the check fails because of these configurations; installing the others");
                outcome = renderer.render(&verdict.installable, false).await;
                blamed = verdict.blamed;
                installed = verdict.installable;
            }
        }
        let failure = match &outcome {
            Ok(Outcome::Updated) => {
                tracing::info!(agent = %config.name, configs = installed.len(), "configuration applied");
                None
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!(agent = %config.name, error = %e, "configuration refused; the last good one keeps serving");
                Some(e.to_string())
            }
        };
        if failure.is_none() {
            for c in &installed {
                last_good.insert(c.id.clone(), c.clone());
            }
        }
        let builtin = config.template.is_none();
        let results = current
            .iter()
            .map(|c| {
                let result = match (&failure, &c.document) {
                    (Some(reason), _) => (false, reason.clone()),
                    (None, _) if blamed.contains_key(&c.id) => {
                        (false, blamed.get(&c.id).cloned().unwrap_or_default())
                    }
                    (None, IngressDocument::Opaque { .. }) if builtin => (
                        false,
                        "an opaque configuration needs a custom --template".to_string(),
                    ),
                    (None, _) => (true, admission.skipped_message(c)),
                };
                (c.id.as_str(), c.version, result)
            })
            .chain(
                admission
                    .refused
                    .iter()
                    .map(|r| (r.id.as_str(), r.version, (false, r.reason.clone()))),
            );
        // A status that could not be written is written again by the next render, which
        // nothing else may trigger: the rollout would wait for it forever.
        let mut unreported = false;
        for (id, version, (ok, message)) in results {
            let entry = (version, ok, message.clone());
            if reported.get(id) == Some(&entry) {
                continue;
            }
            let status = AgentStatus {
                agent: config.name.clone(),
                version,
                ok,
                message,
                time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            };
            let key = keys.status(&config.env, id, &config.name);
            match client
                .put(key, serde_json::to_vec(&status).unwrap_or_default(), None)
                .await
            {
                Ok(_) => {
                    reported.insert(id.to_string(), entry);
                }
                Err(e) => {
                    unreported = true;
                    tracing::warn!(agent = %config.name, error = %e, retry_in = ?VIEW_RETRY, "reporting status failed; will retry")
                }
            }
        }
        // Forget configurations that were deleted (the controller removes their status keys).
        let live: std::collections::HashSet<&str> = current
            .iter()
            .map(|c| c.id.as_str())
            .chain(admission.refused.iter().map(|r| r.id.as_str()))
            .collect();
        reported.retain(|id, _| live.contains(id.as_str()));
        if unreported {
            Rendered::Unreported
        } else {
            Rendered::Done
        }
    }
}

/// What became of one render.
enum Rendered {
    /// Rendered (installed or refused) and reported.
    Done,
    /// Nothing changed: to be tried again after `VIEW_RETRY`.
    Postponed,
    /// Rendered, but a status could not be written: rendered (unchanged, so not reloaded)
    /// and reported again after `VIEW_RETRY`.
    Unreported,
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
