//! `put`, `range`, `txn-put` and `txn-mixed`.

use std::sync::Arc;

use etcd_client::{Client, GetOptions, Txn, TxnOp};
use rand::Rng;

use crate::driver::{connect, drive, progress};
use crate::keys::{value, KeyGen};
use crate::stats::Section;
use crate::{BenchConfig, BenchError, Workload};

pub(crate) const PREFIX: &str = "b/";

pub(crate) async fn run(
    config: &BenchConfig,
    workload: &Workload,
) -> Result<Vec<Section>, BenchError> {
    let conns = connect(config).await?;
    let keys = Arc::new(KeyGen::from_config(PREFIX, config)?);
    let val = Arc::new(value(config.val_size));
    if config.prefill && matches!(workload, Workload::Range { .. } | Workload::TxnMixed { .. }) {
        prefill(config, &conns, &keys, &val).await?;
    }
    let (name, (lat, elapsed)) = match workload.clone() {
        Workload::Put => (
            "put",
            drive(config, &conns, "put", move |mut c: Client, i| {
                let (keys, val) = (keys.clone(), val.clone());
                async move { c.put(keys.key(i), val.as_slice(), None).await.map(|_| ()) }
            })
            .await,
        ),
        Workload::Range { serializable } => (
            "range",
            drive(config, &conns, "range", move |mut c: Client, i| {
                let keys = keys.clone();
                async move {
                    let opts = serializable.then(|| GetOptions::new().with_serializable());
                    c.get(keys.key(i), opts).await.map(|_| ())
                }
            })
            .await,
        ),
        Workload::TxnPut { ops } => {
            (
                "txn",
                drive(config, &conns, "txn-put", move |mut c: Client, i| {
                    let (keys, val) = (keys.clone(), val.clone());
                    async move {
                        // etcd refuses a transaction writing one key twice.
                        let puts: Vec<TxnOp> = keys
                            .keys(i, ops)
                            .into_iter()
                            .map(|k| TxnOp::put(k, val.as_slice(), None))
                            .collect();
                        c.txn(Txn::new().and_then(puts)).await.map(|_| ())
                    }
                })
                .await,
            )
        }
        Workload::TxnMixed { read_ratio } => {
            let read_share = read_ratio / (read_ratio + 1.0);
            (
                "txn",
                drive(config, &conns, "txn-mixed", move |mut c: Client, i| {
                    let (keys, val) = (keys.clone(), val.clone());
                    async move {
                        let read = rand::rng().random_bool(read_share);
                        let op = if read {
                            TxnOp::get(keys.key(i), None)
                        } else {
                            TxnOp::put(keys.key(i), val.as_slice(), None)
                        };
                        c.txn(Txn::new().and_then([op])).await.map(|_| ())
                    }
                })
                .await,
            )
        }
        _ => return Err(BenchError::Invalid("not a key-value workload".into())),
    };
    Ok(vec![lat.summary(name, elapsed)])
}

/// Writes every key of the space once, so reads find something (not measured).
async fn prefill(
    config: &BenchConfig,
    conns: &[Client],
    keys: &Arc<KeyGen>,
    val: &Arc<Vec<u8>>,
) -> Result<(), BenchError> {
    let space = keys.space();
    let bar = progress(
        &BenchConfig {
            limit: crate::Limit::Total(space),
            ..config.clone()
        },
        "prefill",
    );
    let workers = config.clients.clamp(1, 64) as u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (mut c, keys, val, bar) = (
            conns[w as usize % conns.len()].clone(),
            keys.clone(),
            val.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while n < space {
                c.put(keys.nth(n), val.as_slice(), None).await?;
                bar.inc(1);
                n += workers;
            }
            Ok::<(), etcd_client::Error>(())
        }));
    }
    for t in tasks {
        let done = t
            .await
            .map_err(|e| BenchError::Invalid(format!("prefill task: {e}")))?;
        done.map_err(|source| BenchError::Setup {
            what: "prefilling the key space".into(),
            source,
        })?;
    }
    bar.finish_and_clear();
    Ok(())
}
