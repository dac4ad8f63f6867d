//! Renders' file work (compare, stage, rename) on two threads of its own.
//!
//! The work is blocking, so it must stay off the async workers (a slow disk would stall
//! every task of the process). tokio's blocking pool hands each job to a thread woken for it
//! and wakes the caller's worker after; a thousand agents in one process rendering together
//! (the rollout bench) spent more CPU on those wake-ups than on the files. These threads
//! take queued jobs one after another without sleeping in between, and never grow in number.

use std::sync::{mpsc, Arc, Mutex, OnceLock};

use crate::RenderError;

type Job = Box<dyn FnOnce() + Send>;

/// Two, so that one job waiting on the disk does not hold up all the others.
const THREADS: usize = 2;

/// The queue, or `None` when no thread could be started (the work then goes to tokio's
/// blocking pool).
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for n in 0..THREADS {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("ferry-render-files-{n}"))
                    .spawn(move || loop {
                        // Held while waiting: the other thread waits for the lock instead.
                        let next = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = next else { return };
                        // A panicking job loses its answer (its caller gets an error), not
                        // the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    });
                started += usize::from(spawned.is_ok());
            }
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// Runs `work` on the file threads and waits for its result.
pub(crate) async fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RenderError> + Send + 'static,
) -> Result<T, RenderError> {
    let failed = |what: &str| RenderError::Io {
        path: std::path::PathBuf::new(),
        source: std::io::Error::other(what.to_string()),
    };
    let Some(queue) = queue() else {
        return tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| failed(&e.to_string()))?;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    queue
        .send(Box::new(move || {
            let _ = tx.send(work());
        }))
        .map_err(|_| failed("the render file threads are gone"))?;
    rx.await
        .map_err(|_| failed("the render's file work panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_return_their_results_and_a_panic_is_an_error_that_keeps_the_threads() {
        let all: Vec<_> = (0..100u32)
            .map(|n| tokio::spawn(run(move || Ok(n * 2))))
            .collect();
        for (n, job) in all.into_iter().enumerate() {
            assert_eq!(job.await.ok().and_then(|r| r.ok()), Some(n as u32 * 2));
        }
        for _ in 0..THREADS {
            let panicked = run::<()>(|| panic!("a job that panics")).await;
            assert!(
                matches!(panicked, Err(RenderError::Io { .. })),
                "{panicked:?}"
            );
        }
        assert_eq!(run(|| Ok(7)).await.ok(), Some(7));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_stuck_on_one_thread_does_not_hold_up_the_next() {
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let blocked = tokio::spawn(run(move || {
            let _ = stuck.recv_timeout(std::time::Duration::from_secs(10));
            Ok(())
        }));
        let quick = tokio::time::timeout(std::time::Duration::from_secs(5), run(|| Ok(1))).await;
        assert_eq!(quick.ok().and_then(|r| r.ok()), Some(1));
        let _ = release.send(());
        assert!(blocked.await.is_ok_and(|r| r.is_ok()));
    }
}
