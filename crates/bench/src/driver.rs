//! The request loop shared by the workloads: connections, clients, the pacer, latency
//! recording and the progress bar.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::pacer::{Limit, Pacer};
use crate::stats::Latencies;
use crate::{BenchConfig, BenchError};

/// `config.conns` connections.
pub(crate) async fn connect(config: &BenchConfig) -> Result<Vec<Client>, BenchError> {
    let mut conns = Vec::with_capacity(config.conns);
    for _ in 0..config.conns {
        conns.push(ferry_client::connect(&config.connect).await?);
    }
    Ok(conns)
}

/// A progress bar on stderr for `limit`, hidden unless asked for.
pub(crate) fn progress(config: &BenchConfig, label: &str) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = match config.limit {
        Limit::Total(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        Limit::Duration(_) => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = match config.limit {
        Limit::Total(_) => "{prefix} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
        Limit::Duration(_) => "{prefix} {spinner} {pos} requests ({per_sec}, {elapsed})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs `op` from `config.clients` clients over `conns` until the pacer says stop; the
/// merged latencies and the wall time.
pub(crate) async fn drive<F, Fut>(
    config: &BenchConfig,
    conns: &[Client],
    label: &str,
    op: F,
) -> (Latencies, Duration)
where
    F: Fn(Client, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), etcd_client::Error>> + Send,
{
    // The wall clock starts before the pacer's, so a run of a given duration never reports
    // less than that duration.
    let started = Instant::now();
    let pacer = Arc::new(Pacer::new(config.limit, config.rate));
    let bar = progress(config, label);
    let mut tasks = Vec::with_capacity(config.clients);
    for c in 0..config.clients {
        let client = conns[c % conns.len()].clone();
        let (pacer, bar, op) = (pacer.clone(), bar.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            while let Some(i) = pacer.next().await {
                let t = Instant::now();
                match op(client.clone(), i).await {
                    Ok(()) => lat.record(t.elapsed()),
                    Err(e) => lat.fail(e),
                }
                bar.inc(1);
            }
            lat
        }));
    }
    let mut all = Latencies::new();
    for t in tasks {
        match t.await {
            Ok(lat) => all.merge(&lat),
            Err(e) => all.fail(format!("client task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    (all, elapsed)
}
