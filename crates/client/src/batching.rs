//! Writes that leave together: one HTTP/2 connection shared by several callers (agents
//! behind one proxy, or a server's streams answered by one batch) should send what they
//! have ready in one `writev`, not one each.
//!
//! tokio runs a task woken by the task it is running next (its LIFO slot), so a
//! connection's task woken by the first of several callers writes that caller's frames
//! alone before the others have queued theirs. [`drive`] lets such a connection, while
//! more than one call is pending on it, yield once to the runnable tasks before it writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

/// Drives `connection` to completion. While `pending` (calls waiting for their answer,
/// requests in progress: the caller counts) is above one, the driver, once woken, first
/// yields to every task already runnable, so that the others queue their frames before it
/// writes. A lone call is never held back.
pub async fn drive<F: Future + Unpin>(connection: &mut F, pending: &AtomicUsize) -> F::Output {
    let mut yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    std::future::poll_fn(|cx| {
        if let Some(turn) = yielding.as_mut() {
            if turn.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            yielding = None;
        }
        let polled = Pin::new(&mut *connection).poll(cx);
        if polled.is_pending() && pending.load(Ordering::Relaxed) > 1 {
            yielding = Some(Box::pin(tokio::task::yield_now()));
        }
        polled
    })
    .await
}
