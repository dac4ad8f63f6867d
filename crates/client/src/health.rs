//! Talking to a cluster the way etcd's Go client does: requests go only to members that
//! answer. tonic's balancer keeps a dead member in its set and hands requests to it (they
//! fail with its connection error); so the endpoints are probed at connect time and then
//! every [`PROBE_INTERVAL`], a member that stops answering is taken out of the balancer and
//! put back when it answers again. The last answering member is never taken out: with none
//! left, requests fail at once rather than wait for one.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, TlsOptions};
use http::Uri;
use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;

/// How often every endpoint is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What a tonic endpoint to a member needs (as etcd-client builds them).
#[derive(Clone)]
pub(crate) struct EndpointSpec {
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    pub tls: Option<TlsOptions>,
    pub auto_sync_interval: Option<Duration>,
    /// HTTP/2 keep-alive time and timeout.
    pub keepalive: (Duration, Duration),
}

impl EndpointSpec {
    fn build(&self, url: &str) -> Result<Endpoint, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(self.dial_timeout)
            .timeout(self.request_timeout)
            .http2_keep_alive_interval(self.keepalive.0)
            .keep_alive_timeout(self.keepalive.1)
            .keep_alive_while_idle(false);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint)
    }
}

/// What adds endpoints to and removes them from a balanced channel.
type Updater = Sender<Change<Uri, Endpoint>>;

/// A balanced channel whose endpoint updater is kept for the health task.
struct KeepUpdater(Arc<parking_lot::Mutex<Option<Updater>>>);

impl etcd_client::BalancedChannelBuilder for KeepUpdater {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(etcd_client::Channel, Updater), Self::Error> {
        let (channel, tx) = tonic::transport::Channel::balance_channel(buffer_size);
        *self.0.lock() = Some(tx.clone());
        let retrying = tower::util::BoxCloneSyncService::new(crate::retry::Retrying::new(channel));
        Ok((etcd_client::Channel::Custom(retrying), tx))
    }
}

/// Whether the member at `url` answers a Status call within `timeout` and knows a leader,
/// on a connection of its own (kept in `cache` between probes).
async fn probe(
    url: &str,
    options: &ConnectOptions,
    timeout: Duration,
    cache: &mut HashMap<String, Client>,
) -> Result<(), etcd_client::Error> {
    let attempt = async {
        let mut client = match cache.get(url) {
            Some(c) => c.clone(),
            None => {
                let c = Client::connect([url], Some(options.clone())).await?;
                cache.insert(url.to_string(), c.clone());
                c
            }
        };
        let status = client.status().await?;
        // A member that knows no leader cannot serve writes or linearizable reads.
        if status.leader() == 0 {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "{url} has no leader"
            )));
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(etcd_client::Error::InvalidArgs(format!(
            "{url} did not answer within {timeout:?}"
        ))),
    }
}

/// Connects to the members of `urls` that answer (in order), and keeps the balancer's set
/// in step with which members answer for as long as the client lives.
pub(crate) async fn connect_cluster(
    urls: Vec<String>,
    options: ConnectOptions,
    probe_options: ConnectOptions,
    spec: EndpointSpec,
) -> Result<Client, etcd_client::Error> {
    let mut cache = HashMap::new();
    let mut healthy = Vec::new();
    let mut first_error = None;
    for url in &urls {
        match probe(url, &probe_options, spec.dial_timeout, &mut cache).await {
            Ok(()) => healthy.push(url.clone()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if healthy.is_empty() {
        return Err(first_error
            .unwrap_or_else(|| etcd_client::Error::InvalidArgs("no endpoint answered".into())));
    }
    let updater = Arc::new(parking_lot::Mutex::new(None));
    let client = Client::connect_with_balanced_channel(
        &healthy,
        Some(options),
        KeepUpdater(updater.clone()),
    )
    .await?;
    let tx = updater.lock().take();
    if let Some(tx) = tx {
        let inserted: BTreeSet<String> = healthy.into_iter().collect();
        tokio::spawn(keep_in_step(tx, urls, inserted, probe_options, spec, cache));
    }
    Ok(client)
}

/// The client URLs of the cluster's started members, asked of an answering member, in
/// the scheme the endpoints use.
async fn member_urls(
    inserted: &BTreeSet<String>,
    cache: &mut HashMap<String, Client>,
    spec: &EndpointSpec,
    timeout: Duration,
) -> Option<Vec<String>> {
    for url in inserted {
        let Some(mut client) = cache.get(url).cloned() else {
            continue;
        };
        let Ok(Ok(list)) = tokio::time::timeout(timeout, client.member_list()).await else {
            continue;
        };
        let https = spec.tls.is_some();
        let mut urls: Vec<String> = list
            .members()
            .iter()
            .flat_map(|m| m.client_urls().iter())
            .filter(|u| u.starts_with(if https { "https://" } else { "http://" }))
            .cloned()
            .collect();
        urls.sort();
        urls.dedup();
        if !urls.is_empty() {
            return Some(urls);
        }
    }
    None
}

/// Probes every member until the client is gone (its balancer dropped the receiver).
async fn keep_in_step(
    tx: Updater,
    mut urls: Vec<String>,
    mut inserted: BTreeSet<String>,
    options: ConnectOptions,
    spec: EndpointSpec,
    mut cache: HashMap<String, Client>,
) {
    let probe_timeout = spec.dial_timeout.min(Duration::from_secs(1));
    let mut last_sync = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if tx.is_closed() {
            return;
        }
        if let Some(every) = spec.auto_sync_interval {
            if last_sync.elapsed() >= every {
                last_sync = tokio::time::Instant::now();
                if let Some(members) =
                    member_urls(&inserted, &mut cache, &spec, probe_timeout).await
                {
                    // Members that left the cluster are taken out for good.
                    for gone in urls.iter().filter(|u| !members.contains(u)) {
                        if inserted.remove(gone) {
                            if let Ok(uri) = Uri::from_str(gone) {
                                if tx.send(Change::Remove(uri)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    if members != urls {
                        tracing::info!(endpoints = ?members, "endpoints synced from the member list");
                    }
                    urls = members;
                }
            }
        }
        let mut answering = BTreeSet::new();
        for url in &urls {
            match probe(url, &options, probe_timeout, &mut cache).await {
                Ok(()) => {
                    answering.insert(url.clone());
                }
                Err(_) => {
                    // A fresh connection next time: the old one may be wedged.
                    cache.remove(url);
                }
            }
        }
        let wanted: BTreeSet<String> = if answering.is_empty() {
            urls.iter().cloned().collect()
        } else {
            answering
        };
        for url in &urls {
            let Ok(uri) = Uri::from_str(url) else {
                continue;
            };
            let change = match (wanted.contains(url), inserted.contains(url)) {
                (true, false) => match spec.build(url) {
                    Ok(endpoint) => {
                        tracing::info!(endpoint = %url, "etcd member answers again; sending requests to it");
                        Change::Insert(uri, endpoint)
                    }
                    Err(_) => continue,
                },
                (false, true) => {
                    tracing::warn!(endpoint = %url, "etcd member does not answer; sending requests elsewhere");
                    Change::Remove(uri)
                }
                _ => continue,
            };
            if tx.send(change).await.is_err() {
                return;
            }
            if wanted.contains(url) {
                inserted.insert(url.clone());
            } else {
                inserted.remove(url);
            }
        }
    }
}
