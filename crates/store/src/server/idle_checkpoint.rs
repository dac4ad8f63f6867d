//! The idle checkpoint: once no batch has been logged for a tick, what the log holds is made
//! durable in redb and the log's old segments go.
//!
//! etcd commits its backend on a 100 ms timer. ferry's writer checkpoints on its own only
//! after 1 s or 64 MiB of log, so a lone client's puts seldom wait behind one; this loop
//! covers the quiet time in between, so that a burst of writes reaches redb, and its log is
//! trimmed, a tick after it ends rather than at the next write.

use crate::mvcc::kvstore::{MvccStore, WriteRequest, CHECKPOINT_WHEN_IDLE};

/// Checks every [`CHECKPOINT_WHEN_IDLE`]; runs until dropped.
pub(super) async fn run(store: MvccStore) {
    let mut tick = tokio::time::interval(CHECKPOINT_WHEN_IDLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    loop {
        tick.tick().await;
        let logged = store.uncheckpointed_log_bytes();
        // Unchanged for a whole tick: no batch was logged meanwhile.
        if logged > 0 && logged == seen {
            if let Err(e) = store.write(WriteRequest::Checkpoint).await {
                tracing::warn!(error = %e, "idle checkpoint failed");
            }
            seen = 0;
        } else {
            seen = logged;
        }
    }
}
