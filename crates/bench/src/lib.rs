//! `ferry bench`: load for any etcd v3 endpoint, modelled on etcd's own benchmark tool, so
//! the embedded store and a real etcd can be compared with one tool in one run.
//!
//! A run spreads `clients` concurrent clients over `conns` gRPC connections; each client
//! issues one request at a time until the run's limit (a total or a duration), optionally at
//! a fixed overall rate. Latencies go into HDR histograms; the [`Report`] has throughput,
//! min/mean/stddev/p50/p90/p99/p99.9/max and a histogram per kind of operation.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_bench::BenchError> {
//! use ferry_bench::{run, BenchConfig, Workload};
//! let config = BenchConfig::new(ferry_client::ConnectConfig::new(["127.0.0.1:2379"]));
//! let report = run(&config, &Workload::Put).await?;
//! println!("{}", report.to_text());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod driver;
pub mod keys;
pub mod pacer;
mod report;
pub mod stats;
mod workload;

use std::time::Duration;

use serde::Serialize;

pub use pacer::Limit;
pub use stats::{Bucket, LatencySummary, Section};

/// How a run loads the endpoint.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where to connect, and how.
    pub connect: ferry_client::ConnectConfig,
    /// gRPC connections.
    pub conns: usize,
    /// Concurrent clients (spread over the connections).
    pub clients: usize,
    /// When the run ends.
    pub limit: Limit,
    /// Key size in bytes.
    pub key_size: usize,
    /// Value size in bytes.
    pub val_size: usize,
    /// Distinct keys.
    pub key_space_size: u64,
    /// Keys in order instead of at random.
    pub sequential_keys: bool,
    /// Overall requests per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Write the key space once before `range` and `txn-mixed` (off when it is known to be
    /// there, e.g. from an earlier run).
    pub prefill: bool,
}

impl BenchConfig {
    /// etcd's benchmark defaults: 1 connection, 1 client, 10,000 requests, 8-byte keys,
    /// 8-byte values, a key space of 1.
    pub fn new(connect: ferry_client::ConnectConfig) -> Self {
        Self {
            connect,
            conns: 1,
            clients: 1,
            limit: Limit::Total(10_000),
            key_size: 8,
            val_size: 8,
            key_space_size: 1,
            sequential_keys: false,
            rate: None,
            progress: false,
            prefill: true,
        }
    }
}

/// What a run does.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Put keys.
    Put,
    /// Get single keys of a prefilled key space.
    Range {
        /// Serializable (local) reads instead of linearizable ones.
        serializable: bool,
    },
    /// Transactions of `ops` puts each.
    TxnPut {
        /// Puts per transaction.
        ops: usize,
    },
    /// Transactions that read or write one key, `read_ratio` reads per write.
    TxnMixed {
        /// Reads per write.
        read_ratio: f64,
    },
    /// Watch creation latency for `watchers` watches over `streams` streams, then event
    /// delivery while the clients put as fast as they can.
    Watch {
        /// Watches.
        watchers: usize,
        /// Watch streams they share.
        streams: usize,
        /// Keep the watches open this long after the run (to measure the server meanwhile).
        hold: Duration,
    },
    /// Latency from a put to each watcher's event, with paced puts.
    WatchLatency {
        /// Watches.
        watchers: usize,
        /// Watch streams they share.
        streams: usize,
    },
    /// Lease keep-alive round trips, one lease per client.
    LeaseKeepalive,
    /// Lease grants; the leases are left to expire after `ttl` seconds (to measure a server
    /// holding many leases).
    LeaseGrant {
        /// TTL of each lease, seconds.
        ttl: i64,
    },
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Range {
                serializable: false,
            } => "range (linearizable)".into(),
            Workload::Range { serializable: true } => "range (serializable)".into(),
            Workload::TxnPut { ops } => format!("txn-put ({ops} ops)"),
            Workload::TxnMixed { read_ratio } => format!("txn-mixed ({read_ratio} reads/write)"),
            Workload::Watch { watchers, .. } => format!("watch ({watchers} watchers)"),
            Workload::WatchLatency { watchers, .. } => {
                format!("watch-latency ({watchers} watchers)")
            }
            Workload::LeaseKeepalive => "lease-keepalive".into(),
            Workload::LeaseGrant { ttl } => format!("lease-grant (ttl {ttl} s)"),
        }
    }
}

impl Workload {
    /// Refuses parameters that make no sense, before anything connects.
    fn validate(&self, config: &BenchConfig) -> Result<(), BenchError> {
        let invalid = |m: String| Err(BenchError::Invalid(m));
        match self {
            Workload::TxnPut { ops } if *ops == 0 => invalid("--txn-ops must be at least 1".into()),
            Workload::TxnPut { ops } if *ops as u64 > config.key_space_size => invalid(format!(
                "--txn-ops {ops} needs at least as many distinct keys (--key-space-size {})",
                config.key_space_size
            )),
            Workload::TxnMixed { read_ratio }
                if !(*read_ratio >= 0.0 && read_ratio.is_finite()) =>
            {
                invalid(format!(
                    "--rw-ratio {read_ratio}: must be a number of reads per write, 0 or more"
                ))
            }
            Workload::Watch {
                watchers, streams, ..
            }
            | Workload::WatchLatency { watchers, streams }
                if *watchers == 0 || *streams == 0 =>
            {
                invalid("--watchers and --streams must be at least 1".into())
            }
            Workload::LeaseGrant { ttl } if *ttl < 1 => {
                invalid(format!("--ttl {ttl}: must be at least 1 second"))
            }
            _ => {
                let prefix = match self {
                    Workload::Watch { .. } | Workload::WatchLatency { .. } => {
                        workload::watch::PREFIX
                    }
                    _ => workload::kv::PREFIX,
                };
                keys::KeyGen::from_config(prefix, config).map(|_| ())
            }
        }
    }
}

/// Why a run could not happen (failures of single requests are counted in the report).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ferry_client::ConnectError),
    /// A request the run depends on (prefill, lease grant, watch creation) failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The configuration makes no sense.
    #[error("{0}")]
    Invalid(String),
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// Endpoints loaded.
    pub endpoints: Vec<String>,
    /// gRPC connections.
    pub conns: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// One section per kind of operation measured.
    pub sections: Vec<Section>,
}

/// Runs `workload` against the endpoint in `config`.
pub async fn run(config: &BenchConfig, workload: &Workload) -> Result<Report, BenchError> {
    if config.conns == 0 || config.clients == 0 {
        return Err(BenchError::Invalid(
            "--conns and --clients must be at least 1".into(),
        ));
    }
    if matches!(config.limit, Limit::Total(0)) {
        return Err(BenchError::Invalid("--total must be at least 1".into()));
    }
    workload.validate(config)?;
    let sections = match workload {
        Workload::Put
        | Workload::Range { .. }
        | Workload::TxnPut { .. }
        | Workload::TxnMixed { .. } => workload::kv::run(config, workload).await?,
        Workload::Watch {
            watchers,
            streams,
            hold,
        } => workload::watch::run(config, *watchers, *streams, false, *hold).await?,
        Workload::WatchLatency { watchers, streams } => {
            workload::watch::run(config, *watchers, *streams, true, Duration::ZERO).await?
        }
        Workload::LeaseKeepalive => workload::lease::keepalive(config).await?,
        Workload::LeaseGrant { ttl } => workload::lease::grant(config, *ttl).await?,
    };
    Ok(Report {
        workload: workload.name(),
        endpoints: config.connect.endpoints.clone(),
        conns: config.conns,
        clients: config.clients,
        sections,
    })
}
