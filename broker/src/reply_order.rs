//! Deliveries before replies: when a lone packet from a quiet client (a
//! PUBLISH at a low rate) woke a subscriber's task on this worker thread,
//! the publisher's task lets that task write first and writes its own
//! PUBACK after.
//!
//! Why: at low rates the end-to-end latency is the path from the
//! publisher's read to the subscriber's write. A woken task runs from the
//! worker's LIFO slot right after the current one, but only once the
//! current one returns `Pending`; until then the publisher's task wrote its
//! PUBACK and read again — on loopback a `sendto` that also runs the
//! client's receive path and wakes it, plus a read that finds nothing.
//! Mosquitto writes the delivery first, in the same call. At an even
//! 10k msg/s (QoS 1, 10 publishers) the median latency went from 52 to
//! 37 µs and the p99 from 184 to 144 µs (5 alternating pairs,
//! docs/performance.md).
//!
//! `tokio::task::yield_now` would reorder too, but a yielded task is taken
//! up again through the worker's search for work, which wakes the other
//! worker thread (a futex call and a thread wake-up per read): 30 to 40 %
//! more broker CPU at 10k msg/s. Here the publisher's waker waits in a
//! thread-local list instead, and the next connection task that runs on
//! this thread — normally the woken subscriber — wakes it, which puts it in
//! the LIFO slot: no other thread is involved.
//!
//! Only a lone packet after a quiet spell waits: a busy client's reads
//! carry several packets back to back, and the extra poll of its task per
//! read would cost throughput for no latency anyone sees.
//!
//! Nothing may wait for ever: a worker about to park wakes what is left
//! ([`configure`] installs that as the runtime's `on_thread_park`). Only
//! threads of a runtime built that way wait; elsewhere (tests on other
//! runtimes) replies are written at once.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How long a client must have been quiet before a read for its reply to
/// wait for the deliveries.
pub(crate) const QUIET: Duration = Duration::from_micros(100);

thread_local! {
    /// Set on the worker threads of a runtime with the park hook.
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    /// Mailbox readers woken from this thread, ever (wrapping).
    static MAIL_WAKES: Cell<u32> = const { Cell::new(0) };
    static WAITING: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Makes the runtime's worker threads order replies after deliveries:
/// marks them, and wakes whatever still waits when one is about to park.
pub fn configure(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .on_thread_start(|| ENABLED.set(true))
        .on_thread_park(wake_waiting)
}

/// A mailbox woke its reader from this thread.
pub(crate) fn note_mail_wake() {
    MAIL_WAKES.set(MAIL_WAKES.get().wrapping_add(1));
}

/// A mark to give [`woke_since`] after handling a read.
pub(crate) fn mark() -> u32 {
    MAIL_WAKES.get()
}

/// True when a mailbox reader was woken since `mark`, on a thread where
/// waiting is allowed: the caller may wait [`after_woken_tasks`].
pub(crate) fn woke_since(mark: u32) -> bool {
    ENABLED.get() && MAIL_WAKES.get() != mark
}

/// Wakes every task waiting on this thread. Connection tasks call it once
/// they have written; the worker calls it before it parks.
pub(crate) fn wake_waiting() {
    WAITING.with_borrow_mut(|waiting| {
        for waker in waiting.drain(..) {
            waker.wake();
        }
    });
}

/// Resolves on its second poll: once the tasks woken on this thread ran
/// (or anything else woke the caller). At once where waiting is not
/// enabled.
pub(crate) fn after_woken_tasks() -> impl Future<Output = ()> {
    AfterWokenTasks { waited: false }
}

struct AfterWokenTasks {
    waited: bool,
}

impl Future for AfterWokenTasks {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.waited || !ENABLED.get() {
            return Poll::Ready(());
        }
        self.waited = true;
        WAITING.with_borrow_mut(|waiting| waiting.push(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        runtime_with(1)
    }

    fn runtime_with(workers: usize) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers).enable_all();
        configure(&mut builder).build().expect("a runtime")
    }

    #[test]
    fn the_woken_task_writes_before_the_waiting_one() {
        let order = Arc::new(Mutex::new(Vec::new()));
        // Spawned: `block_on` polls on the calling thread, not a worker.
        let done = runtime().block_on({
            let order = order.clone();
            async move {
                tokio::spawn(async move {
                    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                    let subscriber = tokio::spawn({
                        let order = order.clone();
                        async move {
                            let _ = rx.await;
                            order.lock().expect("not poisoned").push("delivery");
                            wake_waiting();
                        }
                    });
                    // Let the subscriber wait on its channel first.
                    tokio::task::yield_now().await;
                    let mark = mark();
                    let _ = tx.send(());
                    note_mail_wake();
                    assert!(woke_since(mark));
                    after_woken_tasks().await;
                    order.lock().expect("not poisoned").push("reply");
                    let _ = subscriber.await;
                    order
                })
                .await
            }
        });
        let order = done
            .expect("the publisher task")
            .lock()
            .expect("not poisoned")
            .clone();
        assert_eq!(order, ["delivery", "reply"]);
    }

    #[test]
    fn with_nobody_to_wake_it_the_parking_worker_does() {
        // Two workers as well: the task is then handed over through the
        // runtime's shared queue while the other worker may be parked.
        for workers in [1, 2] {
            let result = runtime_with(workers).block_on(async {
                let mut waiting = Vec::new();
                for _ in 0..100 {
                    waiting.push(tokio::spawn(async {
                        note_mail_wake();
                        after_woken_tasks().await;
                    }));
                }
                tokio::time::timeout(Duration::from_secs(5), async {
                    for task in waiting {
                        task.await.expect("a waiting task");
                    }
                })
                .await
            });
            assert!(
                result.is_ok(),
                "a waiting task never resumed ({workers} workers)"
            );
        }
    }

    #[tokio::test]
    async fn elsewhere_nothing_waits() {
        let mark = mark();
        note_mail_wake();
        assert!(!woke_since(mark));
        let mut wait = std::pin::pin!(after_woken_tasks());
        assert_eq!(futures_util::poll!(wait.as_mut()), Poll::Ready(()));
    }
}
