//! The store on threads of its own, for a process that also runs other work (`ferry up`:
//! controller and agents beside the store).
//!
//! On one shared runtime every task waits its turn in the same queues: a thousand agents
//! rendering after a change held each status write behind their renders, and the embedded
//! store answered later than the same store as its own process (docs/BENCHMARKS.md, issue
//! 22). With its own worker threads the operating system shares the CPU between the store
//! and the rest, as it does between two processes, without the second process.

use super::{start, RunningStore, StoreConfig};
use crate::StoreError;

/// A runtime that is shut down without blocking when its store is dropped: dropping a
/// runtime waits for its blocking threads, which an async caller must not do.
pub(super) struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Opens the store and serves it on a runtime of its own (one worker thread per CPU, named
/// `ferry-store`), stopped with the returned store.
pub async fn start_on_own_runtime(config: StoreConfig) -> Result<RunningStore, StoreError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ferry-store")
        .enable_all()
        .build()
        .map_err(|source| StoreError::Io {
            what: "starting the store's runtime".into(),
            source,
        })?;
    let started = runtime.spawn(start(config));
    let runtime = OwnRuntime(Some(runtime));
    // On an error `runtime` is dropped here, without blocking.
    let mut running = started
        .await
        .map_err(|e| StoreError::Backend(format!("starting the store: {e}")))??;
    running.own_runtime = Some(runtime);
    Ok(running)
}
