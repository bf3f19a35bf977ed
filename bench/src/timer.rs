//! The timers a client waits on: tokio's, or a kernel high-resolution
//! timer for paced publishers.
//!
//! tokio's timer wheel has 1 ms ticks, so publishers asked to send 0.1 ms
//! apart (10 clients sharing 10,000 msg/s) all wake on the same tick and
//! send in bursts of ten: the "fixed rate" becomes a burst every
//! millisecond, and a latency run measures the queueing inside each burst.
//! A `timerfd` in tokio's reactor wakes the task when the kernel timer
//! expires, to the microsecond, so each client sends at its own phase.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::io::Errno;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

/// Something [`crate::conn::MqttConn::io`] can wait on besides the socket.
pub trait Timer {
    /// `Ready` once the timer has expired.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Timer for Pin<&mut Sleep> {
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.as_mut().poll(cx)
    }
}

/// A one-shot timer to the microsecond, backed by a `timerfd`.
pub struct FineTimer {
    fd: AsyncFd<OwnedFd>,
    /// The deadline armed and not yet seen to expire.
    armed: Option<Instant>,
}

impl FineTimer {
    pub fn new() -> io::Result<FineTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the descriptor is a timerfd that this AsyncFd owns for
        // its whole registration: it is never replaced, nor closed before
        // the AsyncFd deregisters it on drop.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(FineTimer { fd, armed: None })
    }

    /// Arms the timer for `deadline`, replacing any earlier one (setting a
    /// timerfd also clears an expiry not read yet).
    pub fn reset(&mut self, deadline: Instant) -> io::Result<()> {
        // A zero value would disarm the timer: a deadline already passed
        // expires after a nanosecond instead.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        self.armed = Some(deadline);
        Ok(())
    }

    /// The deadline armed, until it has been seen to expire.
    pub fn deadline(&self) -> Option<Instant> {
        self.armed
    }
}

impl Timer for FineTimer {
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed.is_none() {
            return Poll::Pending;
        }
        loop {
            let mut ready = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                // The reactor is gone (the runtime is shutting down):
                // report expiry so that the caller looks at its clock.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            };
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => {
                    // A one-shot timer read empty stays unreadable until the
                    // next reset: clearing readiness now spares the read that
                    // would only learn EAGAIN at the next wait.
                    ready.clear_ready();
                    self.armed = None;
                    return Poll::Ready(());
                }
                // Readiness left over from an expiry that a later reset
                // cleared.
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(_) => {
                    self.armed = None;
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// A publisher's timer: a [`FineTimer`] when the kernel gives one, else
/// tokio's (1 ms ticks).
pub enum PaceTimer {
    Fine(FineTimer),
    Coarse(Pin<Box<Sleep>>),
}

impl PaceTimer {
    /// Fine when `fine` is asked and a timerfd can be had (the files limit
    /// may be reached), coarse otherwise.
    pub fn new(fine: bool, deadline: Instant) -> PaceTimer {
        if fine {
            match FineTimer::new().and_then(|mut timer| timer.reset(deadline).map(|()| timer)) {
                Ok(timer) => return PaceTimer::Fine(timer),
                Err(error) => {
                    static WARNED: Once = Once::new();
                    WARNED.call_once(|| {
                        eprintln!(
                            "starling-bench: warning: no microsecond timer ({error}; \
                             open files limit?): some clients pace on 1 ms ticks"
                        );
                    });
                }
            }
        }
        PaceTimer::Coarse(Box::pin(tokio::time::sleep_until(deadline)))
    }

    /// Arms the timer for `deadline` unless it already is.
    pub fn set(&mut self, deadline: Instant) {
        match self {
            PaceTimer::Fine(timer) => {
                if timer.deadline() != Some(deadline) && timer.reset(deadline).is_err() {
                    // timerfd_settime only fails on a bad descriptor or
                    // value; fall back to tokio's timer rather than stall.
                    *self = PaceTimer::Coarse(Box::pin(tokio::time::sleep_until(deadline)));
                }
            }
            PaceTimer::Coarse(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

impl Timer for PaceTimer {
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            PaceTimer::Fine(timer) => timer.poll_expired(cx),
            PaceTimer::Coarse(sleep) => sleep.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn fine_timer_expires_after_its_deadline() {
        let mut timer = FineTimer::new().unwrap();
        for _ in 0..20 {
            let start = Instant::now();
            let deadline = start + Duration::from_micros(150);
            timer.reset(deadline).unwrap();
            poll_fn(|cx| timer.poll_expired(cx)).await;
            assert!(Instant::now() >= deadline);
            assert_eq!(timer.deadline(), None);
        }
    }

    #[tokio::test]
    async fn a_reset_replaces_the_earlier_deadline() {
        let mut timer = FineTimer::new().unwrap();
        timer.reset(Instant::now()).unwrap();
        let later = Instant::now() + Duration::from_millis(30);
        timer.reset(later).unwrap();
        poll_fn(|cx| timer.poll_expired(cx)).await;
        assert!(Instant::now() >= later);
    }

    #[tokio::test]
    async fn a_passed_deadline_expires_at_once() {
        let past = Instant::now();
        let mut timer = PaceTimer::new(true, past);
        assert!(matches!(timer, PaceTimer::Fine(_)));
        tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| timer.poll_expired(cx)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn coarse_timer_moves_with_set() {
        let mut timer = PaceTimer::new(false, Instant::now() + Duration::from_secs(3600));
        assert!(matches!(timer, PaceTimer::Coarse(_)));
        timer.set(Instant::now() + Duration::from_millis(5));
        tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| timer.poll_expired(cx)))
            .await
            .unwrap();
    }
}
