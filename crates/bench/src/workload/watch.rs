//! `watch` and `watch-latency`: watchers spread over watch streams, all watching the prefix
//! the clients put to. Each value carries the moment it was sent, so every delivered event
//! gives one put-to-event latency.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use futures::FutureExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::raw_watch::RawWatchStream;
use crate::driver::{connect, drive};
use crate::keys::KeyGen;
use crate::stats::{Latencies, Section};
use crate::{BenchConfig, BenchError};

pub(crate) const PREFIX: &str = "w/";
/// When no rate is given, `watch-latency` puts at etcd's benchmark default of 100/s.
const DEFAULT_PACED_RATE: f64 = 100.0;
/// How long receivers wait for missing events once the puts are done.
const DRAIN: Duration = Duration::from_secs(10);

fn stamp(epoch: Instant, size: usize) -> Vec<u8> {
    let nanos = epoch.elapsed().as_nanos() as u64;
    let mut v = nanos.to_be_bytes().to_vec();
    v.resize(size.max(8), b'x');
    v
}

/// The events read at one instant, tallied per put (per timestamp) before they are recorded.
struct Burst {
    now: Instant,
    tally: Option<(Instant, u64)>,
}

impl Burst {
    fn new(now: Instant) -> Self {
        Self { now, tally: None }
    }

    fn add(&mut self, sent: Instant, delivery: &mut Latencies) {
        match &mut self.tally {
            Some((at, n)) if *at == sent => *n += 1,
            _ => {
                self.flush(delivery);
                self.tally = Some((sent, 1));
            }
        }
    }

    fn flush(&mut self, delivery: &mut Latencies) {
        if let Some((sent, n)) = self.tally.take() {
            delivery.record_n(self.now.saturating_duration_since(sent), n);
        }
    }
}

fn sent_at(epoch: Instant, value: &[u8]) -> Option<Instant> {
    let nanos = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    Some(epoch + Duration::from_nanos(nanos))
}

pub(crate) async fn run(
    config: &BenchConfig,
    watchers: usize,
    streams: usize,
    paced: bool,
    hold: Duration,
) -> Result<Vec<Section>, BenchError> {
    let streams = streams.min(watchers);
    let conns = connect(config).await?;
    // The watch streams are read below etcd-client (see `raw_watch`), over connections of
    // their own: as many as the puts', spread over the endpoints alike.
    let endpoints = &config.connect.endpoints;
    let channels = (0..conns.len())
        .map(|i| ferry_client::grpc_channel(&config.connect, &endpoints[i % endpoints.len()]))
        .collect::<Result<Vec<_>, _>>()?;
    let token: Option<Arc<str>> = match &config.connect.credentials {
        Some((user, password)) => {
            let reply = conns[0]
                .auth_client()
                .authenticate(user.clone(), password.clone())
                .await
                .map_err(|source| BenchError::Setup {
                    what: "authenticating the watch streams".into(),
                    source,
                })?;
            Some(reply.token().into())
        }
        None => None,
    };
    let epoch = Instant::now();
    // How many events each stream should expect, known once the puts are done.
    let (expect_tx, expect_rx) = watch::channel::<Option<u64>>(None);
    let (release_tx, release_rx) = watch::channel(false);
    let mut created = Vec::new();
    let mut receivers = Vec::new();
    let mut tasks = Vec::new();
    let creation_started = Instant::now();
    for s in 0..streams {
        let on_stream = watchers / streams + usize::from(s < watchers % streams);
        let channel = channels[s % channels.len()].clone();
        let (created_tx, created_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        created.push(created_rx);
        receivers.push(done_rx);
        tasks.push(tokio::spawn(stream_task(
            channel,
            token.clone(),
            on_stream,
            epoch,
            created_tx,
            expect_rx.clone(),
            done_tx,
            release_rx.clone(),
        )));
    }
    let mut creation = Latencies::new();
    for c in created {
        match c.await {
            Ok(Ok(lat)) => creation.merge(&lat),
            Ok(Err(source)) => {
                return Err(BenchError::Setup {
                    what: "creating watches".into(),
                    source,
                })
            }
            Err(_) => return Err(BenchError::Invalid("a watch stream task ended".into())),
        }
    }
    let creation = creation.summary("watch creation", creation_started.elapsed());

    let mut put_config = config.clone();
    if paced && put_config.rate.is_none() {
        put_config.rate = Some(DEFAULT_PACED_RATE);
    }
    let keys = Arc::new(KeyGen::from_config(PREFIX, config)?);
    let val_size = config.val_size;
    let puts_started = Instant::now();
    let (put_lat, put_elapsed) = drive(&put_config, &conns, "put", move |mut c: Client, i| {
        let keys = keys.clone();
        async move {
            c.put(keys.key(i), stamp(epoch, val_size), None)
                .await
                .map(|_| ())
        }
    })
    .await;
    let puts = put_lat.summary("put", put_elapsed);
    let _ = expect_tx.send(Some(puts.requests));
    let mut delivery = Latencies::new();
    let mut last_event = puts_started;
    // Receivers finish once they have every event (or waited DRAIN for the rest).
    for r in receivers {
        match r.await {
            Ok((lat, last)) => {
                delivery.merge(&lat);
                last_event = last_event.max(last);
            }
            Err(_) => delivery.fail("a watch stream task ended early"),
        }
    }
    let expected = puts.requests * watchers as u64;
    let mut delivery = delivery.summary("event delivery", last_event - puts_started);
    if delivery.requests < expected {
        delivery.errors += expected - delivery.requests;
        delivery.first_error.get_or_insert_with(|| {
            format!(
                "{} of {expected} events never arrived",
                expected - delivery.requests
            )
        });
    }
    if !hold.is_zero() {
        tracing::info!(watchers, ?hold, "holding the watches open");
        tokio::time::sleep(hold).await;
    }
    let _ = release_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(vec![creation, puts, delivery])
}

/// Creates `watchers` watches on one stream (reporting their creation latencies), then
/// records one latency per delivered event until it has all it should get.
#[allow(clippy::too_many_arguments)]
async fn stream_task(
    channel: etcd_client::Channel,
    token: Option<Arc<str>>,
    watchers: usize,
    epoch: Instant,
    created: oneshot::Sender<Result<Latencies, etcd_client::Error>>,
    mut expect: watch::Receiver<Option<u64>>,
    done: oneshot::Sender<(Latencies, Instant)>,
    mut release: watch::Receiver<bool>,
) {
    let mut creation = Latencies::new();
    let t = Instant::now();
    let mut stream = match RawWatchStream::open(channel, token.as_deref(), PREFIX).await {
        Ok(s) => s,
        Err(e) => {
            let _ = created.send(Err(etcd_client::Error::GRpcStatus(e)));
            return;
        }
    };
    // One creation in flight at a time per stream, as a client creating watches would.
    let mut pending_since = vec![t];
    let mut confirmed = 0;
    while confirmed < watchers {
        let message = stream.message().await;
        let created_now = match &message {
            Ok(Some(m)) => m.created().and_then(|c| {
                if c && m.canceled()? {
                    Err(tonic::Status::failed_precondition(
                        "the server refused a watch",
                    ))
                } else {
                    Ok(c)
                }
            }),
            _ => Ok(false),
        };
        match (message, created_now) {
            (_, Err(e)) => {
                let _ = created.send(Err(etcd_client::Error::GRpcStatus(e)));
                return;
            }
            (Ok(Some(_)), Ok(true)) => {
                creation.record(pending_since[confirmed].elapsed());
                confirmed += 1;
                if confirmed < watchers {
                    pending_since.push(Instant::now());
                    if let Err(e) = stream.watch_prefix(PREFIX).await {
                        let _ = created.send(Err(etcd_client::Error::GRpcStatus(e)));
                        return;
                    }
                }
            }
            (Ok(Some(_)), Ok(false)) => {}
            (Ok(None), _) => {
                let _ = created.send(Err(etcd_client::Error::WatchError(
                    "watch stream ended during creation".into(),
                )));
                return;
            }
            (Err(e), _) => {
                let _ = created.send(Err(etcd_client::Error::GRpcStatus(e)));
                return;
            }
        }
    }
    let _ = created.send(Ok(creation));

    let mut delivery = Latencies::new();
    let mut received: u64 = 0;
    let mut last = Instant::now();
    // One timer for the whole loop (re-armed once, when the puts are done): a timer per
    // response would cost the receiver more than the response.
    let mut draining = false;
    let timeout = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timeout);
    loop {
        if let Some(puts) = *expect.borrow() {
            if received >= puts * watchers as u64 {
                break;
            }
            if !draining {
                draining = true;
                timeout.as_mut().reset(Instant::now() + DRAIN);
            }
        }
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(m)) => {
                    // Responses already received when this one is read arrived with it: one
                    // clock reading for all of them, and one histogram entry per put (a put's
                    // events all carry its timestamp).
                    let now = Instant::now();
                    let mut burst = Burst::new(now);
                    let mut next = Some(Ok(Some(m)));
                    let mut ended = false;
                    while let Some(message) = next.take() {
                        match message {
                            Ok(Some(m)) => {
                                let read = m.for_each_put(|value| {
                                    match sent_at(epoch, value) {
                                        Some(sent) => burst.add(sent, &mut delivery),
                                        None => delivery.fail("an event without a timestamp"),
                                    }
                                    received += 1;
                                });
                                if let Err(e) = read {
                                    delivery.fail(e);
                                    ended = true;
                                }
                            }
                            Ok(None) => ended = true,
                            Err(e) => {
                                delivery.fail(e);
                                ended = true;
                            }
                        }
                        if !ended {
                            next = stream.message().now_or_never();
                        }
                    }
                    burst.flush(&mut delivery);
                    last = now;
                    if ended {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => { delivery.fail(e); break; }
            },
            _ = expect.changed() => {}
            () = &mut timeout => break,
        }
    }
    let _ = done.send((delivery, last));
    // Keep the stream (and its watches) open until the run releases it.
    let _ = release.wait_for(|r| *r).await;
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst records every event once, at its own put's latency, however its events
    /// interleave.
    #[test]
    fn a_burst_records_each_event_at_its_puts_latency() {
        let now = Instant::now();
        let (early, late) = (
            now - Duration::from_millis(30),
            now - Duration::from_millis(10),
        );
        let mut delivery = Latencies::new();
        let mut burst = Burst::new(now);
        for sent in [early, early, early, late, late, early] {
            burst.add(sent, &mut delivery);
        }
        burst.flush(&mut delivery);
        let summary = delivery.summary("delivery", Duration::from_secs(1));
        assert_eq!(summary.requests, 6);
        assert!((summary.latency_ms.min - 10.0).abs() < 0.1, "{summary:?}");
        assert!((summary.latency_ms.max - 30.0).abs() < 0.1, "{summary:?}");
        // Four events 30 ms old, two 10 ms old.
        assert!(
            (summary.latency_ms.mean - 70.0 / 3.0).abs() < 0.1,
            "{summary:?}"
        );
    }
}
