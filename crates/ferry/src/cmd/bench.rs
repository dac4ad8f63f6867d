//! `ferry bench`: load any etcd v3 endpoint with etcd's benchmark workloads.

use std::io::IsTerminal;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use ferry_bench::{run, BenchConfig, Limit, Workload};

use ferry_client::ConnectionArgs;

/// Arguments of `ferry bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: WorkloadArg,
    /// gRPC connections.
    #[arg(long, default_value_t = 1, global = true)]
    conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, default_value_t = 1, global = true)]
    clients: usize,
    /// Requests in total (the default is 10000 unless --duration is given).
    #[arg(long, global = true, conflicts_with = "duration")]
    total: Option<u64>,
    /// Run for this long instead of a total (e.g. 30s).
    #[arg(long, global = true)]
    duration: Option<String>,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8, global = true)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8, global = true)]
    val_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1, global = true)]
    key_space_size: u64,
    /// Use keys in order instead of at random.
    #[arg(long, global = true)]
    sequential_keys: bool,
    /// Overall requests per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0, global = true)]
    rate: f64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// range and txn-mixed: do not write the key space first (it is already there).
    #[arg(long, global = true)]
    no_prefill: bool,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Debug, Subcommand)]
enum WorkloadArg {
    /// Put keys.
    Put,
    /// Get single keys of a prefilled key space.
    Range {
        /// l (linearizable) or s (serializable).
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Transactions of puts.
    TxnPut {
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Transactions that read or write one key of a prefilled key space.
    TxnMixed {
        /// Reads per write.
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
    },
    /// Watch creation, then event delivery while the clients put as fast as they can.
    Watch {
        /// Watches.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Watch streams they share.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Keep the watches open this long after the run (e.g. to read the server's memory).
        #[arg(long, default_value = "0s")]
        hold: String,
    },
    /// Latency from a put to every watcher's event, puts paced by --rate (default 100/s).
    WatchLatency {
        /// Watches.
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Watch streams they share.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// Lease keep-alive round trips, one lease per client.
    LeaseKeepalive,
    /// Lease grants, left to expire (to measure a server holding many leases).
    LeaseGrant {
        /// TTL of each lease, seconds.
        #[arg(long, default_value_t = 600)]
        ttl: i64,
    },
}

fn duration(flag: &str, text: &str) -> anyhow::Result<std::time::Duration> {
    ferry_client::duration::parse(text).map_err(|e| anyhow!("--{flag} {text:?}: {e}"))
}

impl BenchArgs {
    /// Runs the workload and prints the report.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut config = BenchConfig::new(self.connection.config()?);
        config.conns = self.conns;
        config.clients = self.clients;
        config.limit = match (&self.duration, self.total) {
            (Some(d), _) => {
                let d = duration("duration", d)?;
                if d.is_zero() {
                    return Err(anyhow!("--duration must be longer than zero"));
                }
                Limit::Duration(d)
            }
            (None, total) => Limit::Total(total.unwrap_or(10_000)),
        };
        config.key_size = self.key_size;
        config.val_size = self.val_size;
        config.key_space_size = self.key_space_size;
        if self.key_space_size == 0 {
            return Err(anyhow!("--key-space-size must be at least 1"));
        }
        config.sequential_keys = self.sequential_keys;
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err(anyhow!(
                "--rate {}: must be 0 or more requests per second",
                self.rate
            ));
        }
        config.rate = (self.rate > 0.0).then_some(self.rate);
        config.progress = !self.no_progress && std::io::stderr().is_terminal();
        config.prefill = !self.no_prefill;
        let workload = match self.workload {
            WorkloadArg::Put => Workload::Put,
            WorkloadArg::Range { consistency } => Workload::Range {
                serializable: matches!(consistency, Consistency::S),
            },
            WorkloadArg::TxnPut { txn_ops } => Workload::TxnPut { ops: txn_ops },
            WorkloadArg::TxnMixed { rw_ratio } => Workload::TxnMixed {
                read_ratio: rw_ratio,
            },
            WorkloadArg::Watch {
                watchers,
                streams,
                hold,
            } => Workload::Watch {
                watchers,
                streams,
                hold: duration("hold", &hold)?,
            },
            WorkloadArg::WatchLatency { watchers, streams } => {
                Workload::WatchLatency { watchers, streams }
            }
            WorkloadArg::LeaseKeepalive => Workload::LeaseKeepalive,
            WorkloadArg::LeaseGrant { ttl } => Workload::LeaseGrant { ttl },
        };
        let report = run(&config, &workload).await?;
        match self.output {
            Output::Text => print!("{}", report.to_text()),
            Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        Ok(())
    }
}
