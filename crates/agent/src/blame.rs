//! Which configurations make the combined nginx configuration fail its check.
//!
//! Every configuration of an environment is rendered into one nginx.conf, so one bad
//! configuration (a certificate missing on this host, a directive this nginx refuses) would
//! fail all of them. When the combined check fails, the agent builds the largest set that
//! passes: configurations are added one at a time (those unchanged since they last passed
//! first, then the changed ones, each group by id), each addition checked with the real
//! `check_cmd`; one whose addition fails is to blame, and its last good version is tried in
//! its place. The others keep — or get — their new version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferry_controller::PublishedConfig;
use ferry_render::{Outcome, RenderError};

/// Renders a set of configurations, as the agent does, with the given check-only flag.
pub(crate) trait RenderSet {
    /// Renders (and checks) exactly `set`; `check_only` discards the result.
    async fn render(
        &self,
        set: &[Arc<PublishedConfig>],
        check_only: bool,
    ) -> Result<Outcome, RenderError>;
}

/// The set that passes and why each configuration left out (at its new version) failed.
pub(crate) struct Verdict {
    /// What to install: new versions that pass, and last good versions of blamed ones.
    pub(crate) installable: Vec<Arc<PublishedConfig>>,
    /// Configuration id → nginx's complaint about its new version.
    pub(crate) blamed: BTreeMap<String, String>,
}

/// Finds the configurations of `current` to blame for a failing check.
pub(crate) async fn blame(
    renderer: &impl RenderSet,
    current: &[Arc<PublishedConfig>],
    last_good: &HashMap<String, Arc<PublishedConfig>>,
) -> Verdict {
    let unchanged = |c: &Arc<PublishedConfig>| {
        last_good
            .get(&c.id)
            .is_some_and(|good| good.version == c.version)
    };
    let mut order: Vec<&Arc<PublishedConfig>> = current.iter().collect();
    order.sort_by_key(|c| (!unchanged(c), c.id.clone()));
    let mut installable: Vec<Arc<PublishedConfig>> = Vec::new();
    let mut blamed = BTreeMap::new();
    for config in order {
        installable.push(config.clone());
        let Err(e) = renderer.render(&installable, true).await else {
            continue;
        };
        installable.pop();
        blamed.insert(config.id.clone(), e.to_string());
        if let Some(good) = last_good
            .get(&config.id)
            .filter(|g| g.version != config.version)
        {
            installable.push(good.clone());
            if renderer.render(&installable, true).await.is_err() {
                installable.pop();
            }
        }
    }
    Verdict {
        installable,
        blamed,
    }
}
