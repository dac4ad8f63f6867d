//! The store's Prometheus metrics under etcd's names, so etcd's dashboards and alerts work
//! unchanged: server and raft-like counters of a single member, MVCC operation counts, the
//! database size, watchers, leases, commit durations, gRPC calls and `process_*`.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::mvcc::kvstore::MvccStore;

/// `grpc_server_started_total`'s labels (go-grpc-prometheus).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCall {
    /// `unary`, `server_stream`, `bidi_stream`.
    pub grpc_type: &'static str,
    /// `etcdserverpb.KV`.
    pub grpc_service: String,
    /// `Range`.
    pub grpc_method: String,
}

/// `grpc_server_handled_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcHandled {
    /// As [`GrpcCall`].
    pub grpc_type: &'static str,
    /// As [`GrpcCall`].
    pub grpc_service: String,
    /// As [`GrpcCall`].
    pub grpc_method: String,
    /// `OK`, `InvalidArgument`, … (Go's names).
    pub grpc_code: &'static str,
}

/// Every metric the store serves.
pub struct StoreMetrics {
    registry: Registry,
    /// Put requests.
    pub puts: Counter,
    /// DeleteRange requests.
    pub deletes: Counter,
    /// Range requests.
    pub ranges: Counter,
    /// Txn requests.
    pub txns: Counter,
    /// Leases granted.
    pub leases_granted: Counter,
    /// Leases revoked (by a client or by expiry).
    pub leases_revoked: Counter,
    /// Open watchers.
    pub watchers: AtomicI64,
    /// gRPC calls started.
    pub grpc_started: Family<GrpcCall, Counter>,
    /// gRPC calls answered, by code.
    pub grpc_handled: Family<GrpcHandled, Counter>,
    scraped: Scraped,
}

/// Gauges set from the store's state at each scrape.
#[derive(Default)]
struct Scraped {
    has_leader: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    committed: Gauge,
    applied: Gauge,
    pending: Gauge,
    failed: Counter,
    db_size: Gauge,
    db_in_use: Gauge,
    keys: Gauge,
    watchers: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

impl StoreMetrics {
    /// The metrics of `store` (its commit durations are the store's own histogram).
    pub fn new(store: &MvccStore) -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            registry: Registry::default(),
            puts: Counter::default(),
            deletes: Counter::default(),
            ranges: Counter::default(),
            txns: Counter::default(),
            leases_granted: Counter::default(),
            leases_revoked: Counter::default(),
            watchers: AtomicI64::new(0),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            scraped: Scraped::default(),
        };
        let s = &metrics.scraped;
        let commits: Histogram = store.commit_durations();
        let wal_fsyncs: Histogram = store.wal_fsync_durations();
        registry.register(
            "etcd_server_has_leader",
            "Whether a leader exists (always 1: a single member leads)",
            s.has_leader.clone(),
        );
        registry.register(
            "etcd_server_is_leader",
            "Whether this member is the leader",
            s.is_leader.clone(),
        );
        registry.register(
            "etcd_server_leader_changes_seen",
            "Leader changes seen",
            s.leader_changes.clone(),
        );
        registry.register(
            "etcd_server_proposals_committed_total",
            "Write requests committed",
            s.committed.clone(),
        );
        registry.register(
            "etcd_server_proposals_applied_total",
            "Write requests applied",
            s.applied.clone(),
        );
        registry.register(
            "etcd_server_proposals_pending",
            "Write requests pending",
            s.pending.clone(),
        );
        registry.register(
            "etcd_server_proposals_failed",
            "Write requests failed to commit",
            s.failed.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Size of the backend database file",
            s.db_size.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Size of the backend database in use",
            s.db_in_use.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_keys_total",
            "Keys with retained history",
            s.keys.clone(),
        );
        registry.register("etcd_mvcc_put", "Put requests", metrics.puts.clone());
        registry.register(
            "etcd_mvcc_delete",
            "DeleteRange requests",
            metrics.deletes.clone(),
        );
        registry.register("etcd_mvcc_range", "Range requests", metrics.ranges.clone());
        registry.register("etcd_mvcc_txn", "Txn requests", metrics.txns.clone());
        registry.register(
            "etcd_debugging_mvcc_watcher_total",
            "Open watchers",
            s.watchers.clone(),
        );
        registry.register(
            "etcd_debugging_lease_granted",
            "Leases granted",
            metrics.leases_granted.clone(),
        );
        registry.register(
            "etcd_debugging_lease_revoked",
            "Leases revoked",
            metrics.leases_revoked.clone(),
        );
        registry.register(
            "etcd_disk_backend_commit_duration_seconds",
            "Durable backend commits (checkpoints of the write-ahead log into redb)",
            commits,
        );
        registry.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "Write-ahead log appends, each with its fdatasync (one per acknowledged batch)",
            wal_fsyncs,
        );
        registry.register(
            "grpc_server_started",
            "gRPC calls started",
            metrics.grpc_started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "gRPC calls answered",
            metrics.grpc_handled.clone(),
        );
        registry.register(
            "process_cpu_seconds_total",
            "User and system CPU time",
            s.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory",
            s.resident.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory",
            s.virtual_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            s.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Limit of open file descriptors",
            s.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time since the Unix epoch",
            s.start_time.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The text exposition, with the gauges read from `store` now.
    pub fn encode(&self, store: &MvccStore) -> String {
        let s = &self.scraped;
        let shared = store.shared();
        let applied = shared.applied_index.load(Ordering::Acquire);
        s.has_leader.set(1);
        s.is_leader.set(1);
        s.committed.set(applied);
        s.applied.set(applied);
        s.pending.set(0);
        let size = store.db_size() as i64;
        s.db_size.set(size);
        s.db_in_use.set(size);
        s.keys.set(shared.index.read().len() as i64);
        s.watchers.set(self.watchers.load(Ordering::Relaxed));
        let process = process::read();
        s.cpu_seconds.set(process.cpu_seconds);
        s.resident.set(process.resident_bytes);
        s.virtual_memory.set(process.virtual_bytes);
        s.open_fds.set(process.open_fds);
        s.max_fds.set(process.max_fds);
        s.start_time.set(process.start_time);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// What `/proc` says about this process (zeros where it cannot be read).
mod process {
    /// Clock ticks per second of `/proc/<pid>/stat` times (Linux's fixed USER_HZ).
    const TICKS: f64 = 100.0;

    #[derive(Default)]
    pub struct Process {
        pub cpu_seconds: f64,
        pub resident_bytes: i64,
        pub virtual_bytes: i64,
        pub open_fds: i64,
        pub max_fds: i64,
        pub start_time: i64,
    }

    fn kb(status: &str, field: &str) -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            * 1024
    }

    pub fn read() -> Process {
        let mut p = Process::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            p.resident_bytes = kb(&status, "VmRSS:");
            p.virtual_bytes = kb(&status, "VmSize:");
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as i64)
            .unwrap_or(0);
        p.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        // Fields after the command name (which may hold spaces) in /proc/self/stat.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| {
            fields
                .get(n)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15, starttime 22 (1-based, the state is 3).
        p.cpu_seconds = (field(11) + field(12)) / TICKS;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        p.start_time = (boot + field(19) / TICKS) as i64;
        p
    }
}
