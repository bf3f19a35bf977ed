//! Client id → session slot. A slot is where a session lives between
//! connections and the meeting point of a takeover: the connecting side
//! kicks the owner and waits for it to hand the state back.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use starling_codec::ByteString;
use tokio::sync::{Notify, oneshot};

use crate::message::SessionId;
use crate::session::mailbox::Mailbox;
use crate::session::state::SessionState;

/// Why a connection is told to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection with the same client id took the session.
    TakenOver,
    /// The node is draining: the client should connect elsewhere.
    UseAnotherServer,
    /// An operator disconnects the client (`Kick` call), with this reason.
    Administrative(starling_codec::ReasonCode),
}

/// Who has the session right now.
pub enum Owner {
    /// No session (never created, or it ended).
    Vacant,
    /// A connection task owns the state; `kick` asks it to leave.
    Connected {
        conn_id: u64,
        kick: Option<oneshot::Sender<Kick>>,
    },
    /// The client is away; the session waits for it or for its expiry.
    Offline {
        /// Boxed so that a connected slot does not carry a state's worth of
        /// empty space.
        state: Box<SessionState>,
        mailbox: Arc<Mailbox>,
    },
}

pub struct Slot {
    pub client_id: ByteString,
    /// Serializes connects for one client id.
    pub connect_lock: tokio::sync::Mutex<()>,
    /// Signalled whenever a connection gives the session back.
    pub released: Notify,
    pub inner: Mutex<SlotInner>,
    /// Connects in progress; a slot is only removed from the map when none is.
    pending: AtomicUsize,
}

pub struct SlotInner {
    pub owner: Owner,
    /// Bumped on every change of owner; a timer armed for one generation
    /// does nothing in another.
    pub generation: u64,
    /// A delayed will waiting for its time (MQTT 5.0 §3.1.2.5).
    pub pending_will: Option<Box<starling_codec::LastWill>>,
    /// The session's mailbox while it has one, connected or not (messages
    /// redirected from another node are delivered into it).
    pub mailbox: Option<Arc<Mailbox>>,
    /// The task running this generation's expiry and will-delay clocks.
    timer: Option<tokio::task::AbortHandle>,
}

impl SlotInner {
    /// Moves to the next generation: the owner changes, and the clocks of
    /// the one before stop. Their task is ended, not left to find out at
    /// its deadline: a session reconnecting every second with a two-hour
    /// expiry would otherwise keep 7,200 sleeping tasks.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.generation
    }

    /// Records the clocks' task of `generation`; one armed for a
    /// generation that has passed already is ended at once.
    pub fn set_timer(&mut self, generation: u64, timer: tokio::task::AbortHandle) {
        if generation == self.generation {
            if let Some(previous) = self.timer.replace(timer) {
                previous.abort();
            }
        } else {
            timer.abort();
        }
    }

    /// The clocks' task is ending by itself: it ends its generation
    /// without being aborted.
    pub fn expire_generation(&mut self) {
        self.timer = None;
        self.generation += 1;
    }
}

/// A slot in the registry's set, found by its client id: the id is not
/// stored a second time as a map key (every session pays for the map).
struct ById(Arc<Slot>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<str>::borrow(self).hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ById {}

#[derive(Default)]
pub struct SessionRegistry {
    slots: Mutex<HashSet<ById>>,
    next_session: AtomicU64,
    next_connection: AtomicU64,
}

impl SessionRegistry {
    pub fn new_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn new_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The slot for `client_id`, created if needed, with a connect marked
    /// pending so that it is not removed under the caller's feet.
    pub fn checkout(&self, client_id: &ByteString) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        let slot = match slots.get(&**client_id) {
            Some(existing) => existing.0.clone(),
            None => {
                let slot = Arc::new(Slot {
                    client_id: client_id.clone(),
                    connect_lock: tokio::sync::Mutex::new(()),
                    released: Notify::new(),
                    inner: Mutex::new(SlotInner {
                        owner: Owner::Vacant,
                        generation: 0,
                        timer: None,
                        pending_will: None,
                        mailbox: None,
                    }),
                    pending: AtomicUsize::new(0),
                });
                slots.insert(ById(slot.clone()));
                slot
            }
        };
        slot.pending.fetch_add(1, Ordering::AcqRel);
        slot
    }

    /// The slot of `client_id` if it exists, marked pending like
    /// [`checkout`](Self::checkout).
    pub fn lookup(&self, client_id: &str) -> Option<Arc<Slot>> {
        let slots = self.slots.lock();
        let slot = slots.get(client_id)?.0.clone();
        slot.pending.fetch_add(1, Ordering::AcqRel);
        Some(slot)
    }

    /// Whether this node has a slot for `client_id` (a session, or a
    /// connect under way).
    pub fn contains(&self, client_id: &str) -> bool {
        self.slots.lock().contains(client_id)
    }

    /// The mailbox of `client_id`'s session, if it has one here.
    pub fn mailbox_of(&self, client_id: &str) -> Option<Arc<Mailbox>> {
        let slot = self.slots.lock().get(client_id)?.0.clone();
        slot.inner.lock().mailbox.clone()
    }

    /// Ends the pending mark taken by [`checkout`](Self::checkout).
    pub fn checkin(&self, slot: &Arc<Slot>) {
        slot.pending.fetch_sub(1, Ordering::AcqRel);
        self.remove_if_vacant(slot);
    }

    /// Drops a slot from the map when it holds no session and nobody is
    /// connecting to it.
    pub fn remove_if_vacant(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock();
        if slot.pending.load(Ordering::Acquire) != 0 {
            return;
        }
        if !matches!(slot.inner.lock().owner, Owner::Vacant) {
            return;
        }
        if slots
            .get(&*slot.client_id)
            .is_some_and(|s| Arc::ptr_eq(&s.0, slot))
        {
            slots.remove(&*slot.client_id);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.lock().is_empty()
    }

    /// Every slot (for drain and admin listings).
    pub fn all(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().iter().map(|s| s.0.clone()).collect()
    }

    /// Asks the connection owning `slot`, if any, to leave for `reason`.
    /// Returns whether a connection was asked.
    pub fn kick(slot: &Slot, reason: Kick) -> bool {
        let kick = match &mut slot.inner.lock().owner {
            Owner::Connected { kick, .. } => kick.take(),
            _ => None,
        };
        kick.is_some_and(|k| k.send(reason).is_ok())
    }
}
