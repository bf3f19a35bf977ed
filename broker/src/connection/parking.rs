//! Idle connections without a task of their own.
//!
//! Most connections of an IoT fleet are idle most of the time, so what an
//! idle connection costs decides how many a node holds. Running, it costs
//! a tokio task (whose future holds the connection loop, about 1.3 KB) and
//! tokio's registration of its socket (256 B) on top of its session. So a
//! connection idle for `park_idle_after_ms` gives both up: its socket moves
//! to one poller thread shared by every parked connection ([`ParkingLot`]),
//! and what it needs to go on — negotiated settings, session state,
//! mailbox, kick receiver — waits in a slab ([`Parked`]).
//!
//! Whatever concerns a parked connection brings it back: bytes on its
//! socket, mail (its mailbox holds a waker of the lot's), a kick (takeover,
//! drain, an operator), its keep-alive running out, shutdown. A new task
//! then carries on where the old one stopped. PINGREQ — all most idle
//! devices ever send — is answered by the poller itself, and the
//! connection stays parked.
//!
//! Races are settled by the slab: whoever removes an entry owns the
//! connection. Parking registers the wakers and checks for mail and kicks
//! while holding the lot's lock, so a wake-up that fires meanwhile is
//! handled after the entry exists.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll as MioPoll, Token};
use parking_lot::Mutex;
use slab::Slab;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Bound, Frontend, resume};
use crate::metrics::Metrics;
use crate::session::registry::Kick;

/// The poller's own token: wake-ups queued in `Shared::woken`.
const WAKE: Token = Token(usize::MAX);
/// PINGREQ and PINGRESP, the same in every protocol version.
const PINGREQ: [u8; 2] = [0xC0, 0x00];
const PINGRESP: [u8; 2] = [0xD0, 0x00];

/// Everything a connection keeps while parked: no buffer, no task.
pub(crate) struct Parked {
    pub stream: std::net::TcpStream,
    pub bound: Bound,
    /// Told apart from an earlier occupant of the same slab entry; set by
    /// the lot (0 until then).
    pub generation: u32,
}

/// Why a connection could not park; it goes on running.
pub(crate) enum Refusal {
    /// Something is already waiting for it (mail), or the lot is closed.
    Busy(Box<Parked>),
    /// It was kicked just now, for this reason.
    Kicked(Box<Parked>, Kick),
}

/// The shared poller of parked connections. One per frontend, started by
/// the first connection that parks.
pub(crate) struct ParkingLot {
    shared: Arc<Shared>,
}

struct Shared {
    lot: Mutex<Lot>,
    /// Tokens whose waker fired, for the poller to resume.
    woken: Mutex<Vec<u64>>,
    registry: mio::Registry,
    waker: mio::Waker,
    frontend: Weak<Frontend>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    tracker: TaskTracker,
}

#[derive(Default)]
struct Lot {
    entries: Slab<Box<Parked>>,
    /// Keep-alive deadlines, earliest first. An entry whose deadline moved
    /// later (it answered a PINGREQ) is pushed again when its old deadline
    /// comes up, so there is at most one heap entry per parked connection.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_generation: u32,
    closed: bool,
}

/// A parked connection's waker: queues its token and wakes the poller.
struct ParkWaker {
    token: u64,
    shared: Weak<Shared>,
}

impl Wake for ParkWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.woken.lock().push(self.token);
            let _ = shared.waker.wake();
        }
    }
}

fn token_of(key: usize, generation: u32) -> u64 {
    ((key as u64) << 32) | u64::from(generation)
}

fn split(token: u64) -> (usize, u32) {
    ((token >> 32) as usize, token as u32)
}

impl ParkingLot {
    /// Starts the poller thread, and a task that resumes every parked
    /// connection when the broker shuts down. Must run inside the runtime.
    pub fn start(frontend: &Arc<Frontend>) -> std::io::Result<ParkingLot> {
        let broker = &frontend.broker;
        let poll = MioPoll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let shared = Arc::new(Shared {
            lot: Mutex::new(Lot::default()),
            woken: Mutex::new(Vec::new()),
            registry: poll.registry().try_clone()?,
            waker,
            frontend: Arc::downgrade(frontend),
            metrics: broker.metrics.clone(),
            runtime: tokio::runtime::Handle::current(),
            tracker: broker.connections.clone(),
        });
        let poller = shared.clone();
        std::thread::Builder::new()
            .name("starling-parking".into())
            .spawn(move || poller.run(poll))?;
        // Tracked, so that shutdown waits until every parked connection is
        // a task again (and has said goodbye).
        let closer = CloseOnDrop(shared.clone());
        let shutdown = broker.shutdown.clone();
        // The lot only holds its frontend weakly (the frontend holds the
        // lot); this task keeps it alive until shutdown, when every parked
        // connection resumes with it to say goodbye, even after the
        // listeners, which held the other references, are gone.
        let frontend = frontend.clone();
        broker.connections.spawn(async move {
            shutdown.cancelled().await;
            drop(closer);
            drop(frontend);
        });
        Ok(ParkingLot { shared })
    }

    /// Hands a connection over. On refusal it comes back to its task.
    pub fn park(&self, parked: Box<Parked>) -> Result<(), Refusal> {
        self.shared.park(parked)
    }
}

/// Closes the lot when the broker shuts down, or when the runtime goes
/// away without a shutdown (tests): the poller thread must not outlive it.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut lot = self.0.lot.lock();
        lot.closed = true;
        let tokens: Vec<u64> = lot
            .entries
            .iter()
            .map(|(key, parked)| token_of(key, parked.generation))
            .collect();
        for token in tokens {
            self.0.unpark(&mut lot, token, Vec::new());
        }
        drop(lot);
        let _ = self.0.waker.wake();
    }
}

impl Shared {
    fn park(self: &Arc<Self>, mut parked: Box<Parked>) -> Result<(), Refusal> {
        let mut lot = self.lot.lock();
        if lot.closed {
            return Err(Refusal::Busy(parked));
        }
        let key = lot.entries.vacant_key();
        let generation = lot.next_generation;
        let token = token_of(key, generation);
        let waker = Waker::from(Arc::new(ParkWaker {
            token,
            shared: Arc::downgrade(self),
        }));
        if parked.bound.mailbox.watch(&waker) {
            return Err(Refusal::Busy(parked));
        }
        if let Some(kick) = parked.bound.kick.as_mut() {
            match Pin::new(kick).poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(Ok(reason)) => return Err(Refusal::Kicked(parked, reason)),
                // Nobody can kick it any more.
                Poll::Ready(Err(_)) => parked.bound.kick = None,
                Poll::Pending => {}
            }
        }
        let fd = parked.stream.as_raw_fd();
        if let Err(error) = self.registry.register(
            &mut SourceFd(&fd),
            Token(token as usize),
            Interest::READABLE,
        ) {
            warn!(%error, "cannot hand an idle connection to the parking poller");
            return Err(Refusal::Busy(parked));
        }
        lot.next_generation = generation.wrapping_add(1);
        parked.generation = generation;
        if let Some(deadline) = parked.bound.keep_alive_deadline {
            let earliest = lot
                .deadlines
                .peek()
                .is_none_or(|Reverse((first, _))| deadline < *first);
            lot.deadlines.push(Reverse((deadline, token)));
            if earliest {
                // The poller sleeps until the deadline it knew of.
                let _ = self.waker.wake();
            }
        }
        lot.entries.insert(parked);
        Metrics::inc(&self.metrics.connections_parked);
        Metrics::inc(&self.metrics.parks);
        Ok(())
    }

    /// The poller thread: socket events, wake-ups and keep-alive deadlines.
    fn run(self: Arc<Self>, mut poll: MioPoll) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self
                .lot
                .lock()
                .deadlines
                .peek()
                .map(|Reverse((when, _))| when.saturating_duration_since(Instant::now()));
            if let Err(error) = poll.poll(&mut events, timeout) {
                if error.kind() == ErrorKind::Interrupted {
                    continue;
                }
                // Without its poller no parked connection would ever wake:
                // bring them all back and park no more.
                warn!(%error, "parking poller failed; idle connections keep their tasks from now on");
                drop(CloseOnDrop(self.clone()));
                return;
            }
            let mut lot = self.lot.lock();
            if lot.closed {
                return;
            }
            for event in events.iter() {
                if event.token() != WAKE {
                    self.serve_socket(&mut lot, event.token().0 as u64);
                }
            }
            let woken = std::mem::take(&mut *self.woken.lock());
            for token in woken {
                self.unpark(&mut lot, token, Vec::new());
            }
            self.expire(&mut lot, Instant::now());
        }
    }

    /// The socket of a parked connection is readable (or closed): answer
    /// PINGREQs, and resume the connection for anything else.
    fn serve_socket(&self, lot: &mut Lot, token: u64) {
        let (key, generation) = split(token);
        let Some(parked) = lot.entries.get_mut(key) else {
            return;
        };
        if parked.generation != generation {
            return;
        }
        match answer_pings(parked) {
            Ok(()) => {}
            Err(owed) => self.unpark(lot, token, owed),
        }
    }

    /// Resumes the connection behind `token` in a new task, `owed` being
    /// bytes it must write first. Nothing happens if it already left.
    fn unpark(&self, lot: &mut Lot, token: u64, owed: Vec<u8>) {
        let (key, generation) = split(token);
        match lot.entries.get(key) {
            Some(parked) if parked.generation == generation => {}
            _ => return,
        }
        let parked = lot.entries.remove(key);
        let fd = parked.stream.as_raw_fd();
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        Metrics::dec(&self.metrics.connections_parked);
        let Some(frontend) = self.frontend.upgrade() else {
            return;
        };
        self.runtime
            .spawn(self.tracker.track_future(resume(frontend, parked, owed)));
    }

    /// Resumes connections whose keep-alive ran out; their task closes them.
    fn expire(&self, lot: &mut Lot, now: Instant) {
        while let Some(&Reverse((when, token))) = lot.deadlines.peek() {
            if when > now {
                return;
            }
            lot.deadlines.pop();
            let (key, generation) = split(token);
            let current = match lot.entries.get(key) {
                Some(parked) if parked.generation == generation => parked.bound.keep_alive_deadline,
                _ => continue,
            };
            match current {
                Some(deadline) if deadline > now => {
                    lot.deadlines.push(Reverse((deadline, token)));
                }
                _ => {
                    debug!(client_id = %lot.entries[key].bound.n.client_id, "parked connection's keep-alive ran out");
                    self.unpark(lot, token, Vec::new());
                }
            }
        }
    }
}

/// Answers every whole PINGREQ waiting on the socket. `Err` with the bytes
/// still owed to the client when the connection must resume: other bytes
/// arrived, the socket closed or failed, or the answer did not fit.
fn answer_pings(parked: &mut Parked) -> Result<(), Vec<u8>> {
    let mut peeked = [0u8; 64];
    loop {
        let n = match parked.stream.peek(&mut peeked) {
            // Closed: the task reads the end and says goodbye.
            Ok(0) => return Err(Vec::new()),
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(Vec::new()),
        };
        let only_pings = n % 2 == 0 && peeked[..n].chunks(2).all(|pair| pair == PINGREQ);
        if !only_pings {
            return Err(Vec::new());
        }
        // Take exactly what was peeked: every byte of it is a PINGREQ.
        let mut taken = 0;
        while taken < n {
            match (&parked.stream).read(&mut peeked[taken..n]) {
                Ok(0) => return Err(Vec::new()),
                Ok(read) => taken += read,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Vec::new()),
            }
        }
        // MQTT-3.1.2-23: any control packet restarts the keep-alive.
        if let Some(keep_alive) = parked.bound.n.silence_allowed() {
            parked.bound.keep_alive_deadline = Some(Instant::now() + keep_alive);
        }
        let answer: Vec<u8> = PINGRESP.repeat(n / 2);
        let written = match (&parked.stream).write(&answer) {
            Ok(written) => written,
            Err(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
            {
                0
            }
            Err(_) => return Err(Vec::new()),
        };
        if written < answer.len() {
            return Err(answer[written..].to_vec());
        }
    }
}

/// Whether parking is worth trying for these connections: the lot,
/// started on first use. `None` when it could not start (logged once).
pub(crate) fn lot_of(frontend: &Arc<Frontend>) -> Option<&ParkingLot> {
    frontend
        .parking
        .get_or_init(|| match ParkingLot::start(frontend) {
            Ok(lot) => Some(lot),
            Err(error) => {
                warn!(%error, "cannot start the parking poller; idle connections keep their tasks");
                None
            }
        })
        .as_ref()
}
