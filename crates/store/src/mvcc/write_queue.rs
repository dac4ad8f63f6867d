//! Group commit without a writer thread: a write joins the queue, and whichever waiting write
//! finds the writer free runs it, for its own request and every one queued with it.
//!
//! A dedicated writer thread costs two thread wake-ups per write (the handler wakes the
//! writer, the writer wakes the handler), which on a small virtual machine cost about as much
//! as the log's fdatasync. Here the handler's own thread applies and syncs, so a lone client
//! pays for neither; under load the leader commits everything queued behind it as one batch,
//! which is the same group commit the thread did. A leader stops once its own request is
//! written (its client is waiting); if requests are still queued it leaves a drain task to
//! write them, so no request waits for a later one, even if its client has gone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A queued request and where its result goes.
pub(crate) struct Queued<Req, Resp> {
    pub request: Req,
    pub reply: oneshot::Sender<Resp>,
}

/// What the leader runs: one batch of queued requests at a time.
pub(crate) trait BatchWriter: Send {
    type Request: Send;
    type Response: Send;

    /// Commits `batch` and answers each request.
    fn write_batch(&mut self, batch: Vec<Queued<Self::Request, Self::Response>>);
}

struct Pending<Req, Resp> {
    queue: VecDeque<(u64, Queued<Req, Resp>)>,
    next_ticket: u64,
}

/// The queue and the writer only one waiting write at a time runs.
pub(crate) struct WriteQueue<W: BatchWriter> {
    pending: Mutex<Pending<W::Request, W::Response>>,
    writer: Mutex<W>,
    /// The highest ticket whose batch has been written.
    written: AtomicU64,
    max_batch: usize,
}

impl<W: BatchWriter> WriteQueue<W> {
    pub fn new(writer: W, max_batch: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                queue: VecDeque::new(),
                next_ticket: 1,
            }),
            writer: Mutex::new(writer),
            written: AtomicU64::new(0),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues `request` and waits for its response; `None` if the writer dropped it.
    pub async fn write(self: &Arc<Self>, request: W::Request) -> Option<W::Response>
    where
        W: 'static,
    {
        let (reply, response) = oneshot::channel();
        let ticket = {
            let mut pending = self.pending.lock();
            let ticket = pending.next_ticket;
            pending.next_ticket += 1;
            pending.queue.push_back((ticket, Queued { request, reply }));
            ticket
        };
        self.lead(ticket);
        response.await.ok()
    }

    /// If the writer is free, writes queued batches until `ticket`'s is written (`u64::MAX`:
    /// until none is queued); then, if requests are still queued, leaves them to a drain task.
    fn lead(self: &Arc<Self>, ticket: u64)
    where
        W: 'static,
    {
        let Some(mut writer) = self.writer.try_lock() else {
            // The leader checks the queue after it lets go, so this request is not forgotten.
            return;
        };
        while self.written.load(Ordering::Acquire) < ticket {
            let (batch, last, more) = {
                let mut pending = self.pending.lock();
                let n = pending.queue.len().min(self.max_batch);
                let mut batch = Vec::with_capacity(n);
                let mut last = 0;
                for (t, queued) in pending.queue.drain(..n) {
                    last = t;
                    batch.push(queued);
                }
                (batch, last, !pending.queue.is_empty())
            };
            if batch.is_empty() {
                break;
            }
            if batch.len() == 1 && !more {
                // A lone write: handing this worker's tasks to another thread would cost the
                // thread wake-ups this design avoids, and there is nobody to hand them to.
                writer.write_batch(batch);
            } else {
                run_blocking(|| writer.write_batch(batch));
            }
            self.written.store(last, Ordering::Release);
        }
        drop(writer);
        if !self.pending.lock().queue.is_empty() {
            self.drain();
        }
    }

    /// Writes whatever is queued, on a task of its own (inline without a runtime).
    fn drain(self: &Arc<Self>)
    where
        W: 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let queue = self.clone();
                handle.spawn(async move { queue.lead(u64::MAX) });
            }
            Err(_) => self.lead(u64::MAX),
        }
    }
}

/// Runs `f`, which blocks (it syncs a file), without stalling the tasks queued on this
/// runtime worker: they move to another thread meanwhile. On a single-threaded runtime it
/// just runs.
fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Answers each request with (request, batch number), taking a while per batch as a sync
    /// does; records every batch's requests.
    struct Recorder {
        batches: Vec<Vec<u64>>,
        pause: std::time::Duration,
    }

    fn recorder(pause_micros: u64) -> Recorder {
        Recorder {
            batches: vec![],
            pause: std::time::Duration::from_micros(pause_micros),
        }
    }

    impl BatchWriter for Recorder {
        type Request = u64;
        type Response = (u64, usize);

        fn write_batch(&mut self, batch: Vec<Queued<u64, (u64, usize)>>) {
            std::thread::sleep(self.pause);
            let number = self.batches.len();
            self.batches.push(batch.iter().map(|q| q.request).collect());
            for q in batch {
                let _ = q.reply.send((q.request, number));
            }
        }
    }

    async fn hammer(clients: u64, each: u64) -> Vec<Vec<u64>> {
        let queue = Arc::new(WriteQueue::new(recorder(200), 16));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let mut last_batch = 0;
                for i in 0..each {
                    let request = c * 1_000_000 + i;
                    let (answered, batch) = queue.write(request).await.expect("answered");
                    assert_eq!(answered, request);
                    assert!(
                        batch >= last_batch,
                        "a later write went into an earlier batch"
                    );
                    last_batch = batch;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        recorded(queue).await
    }

    /// The batches written, once no drain task holds the queue any more.
    async fn recorded(mut queue: Arc<WriteQueue<Recorder>>) -> Vec<Vec<u64>> {
        for _ in 0..100 {
            match Arc::try_unwrap(queue) {
                Ok(queue) => return queue.writer.into_inner().batches,
                Err(shared) => queue = shared,
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("a drain task never finished");
    }

    fn check(batches: &[Vec<u64>], clients: u64, each: u64) {
        let mut all: Vec<u64> = batches.iter().flatten().copied().collect();
        assert_eq!(all.len() as u64, clients * each, "every write exactly once");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len() as u64, clients * each, "no write twice");
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 16));
        for c in 0..clients {
            let mine: Vec<u64> = batches
                .iter()
                .flatten()
                .copied()
                .filter(|r| r / 1_000_000 == c)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "a client's writes in order"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_answered_and_share_batches() {
        let batches = hammer(32, 50).await;
        check(&batches, 32, 50);
        assert!(
            batches.len() < 32 * 50 / 2,
            "{} batches for {} writes: no group commit",
            batches.len(),
            32 * 50
        );
    }

    /// A request whose client gave up while another write was being synced is still written,
    /// without waiting for a later write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_left_by_its_client_is_written_without_a_later_write() {
        let queue = Arc::new(WriteQueue::new(recorder(100_000), 16));
        let first = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.write(1).await })
        };
        // Let the first write become the leader (its batch takes 200 µs), then give up on a
        // second one while it waits.
        tokio::task::yield_now().await;
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_micros(1), queue.write(2)).await;
        assert_eq!(first.await.expect("first write").map(|r| r.0), Some(1));
        let batches = recorded(queue).await;
        let written: Vec<u64> = batches.into_iter().flatten().collect();
        assert!(gave_up.is_ok() || written.contains(&2), "{written:?}");
        assert!(
            written.contains(&2),
            "the abandoned request was never written: {written:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_threaded_runtime_works_too() {
        let batches = hammer(8, 20).await;
        check(&batches, 8, 20);
    }
}
