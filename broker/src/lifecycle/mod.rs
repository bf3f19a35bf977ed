//! How a session begins, changes hands, and ends.
//!
//! - [`open`]: a CONNECT arrives. An existing owner is kicked (takeover) and
//!   its state awaited; clean start discards the old session.
//! - [`close`]: a connection ended. Depending on the session expiry the
//!   state is kept (with an expiry timer) or discarded; the will is
//!   published now, after its delay, or never.

use std::sync::Arc;
use std::time::Duration;

use starling_codec::topic::parse_filter;
use starling_codec::{ByteString, LastWill, QoS};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::node::NodeId;
use crate::router::trie::Subscriber;
use crate::session::directory::MovedSession;
use crate::session::mailbox::Mailbox;
use crate::session::registry::{Kick, Owner, Slot};
use crate::session::state::SessionState;

/// How long a connect waits for the previous owner to hand the session
/// back before taking it regardless.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A session ready for a new connection.
pub struct Opened {
    pub slot: Arc<Slot>,
    pub conn_id: u64,
    pub state: SessionState,
    pub mailbox: Arc<Mailbox>,
    pub session_present: bool,
    pub kick: oneshot::Receiver<Kick>,
}

/// Binds a session to a new connection (MQTT 5.0 §3.1.4 steps 3-4): a
/// local owner is kicked and its session taken; in a cluster, a session on
/// another node is brought over.
pub async fn open(
    broker: &Arc<Broker>,
    client_id: ByteString,
    clean_start: bool,
    expiry: u32,
) -> Opened {
    let slot = broker.sessions.checkout(&client_id);
    let connect_guard = slot.connect_lock.lock().await;
    evict_connection(&slot).await;

    let conn_id = broker.sessions.new_connection_id();
    let (kick_tx, kick_rx) = oneshot::channel();
    let previous = {
        let mut inner = slot.inner.lock();
        inner.next_generation();
        // A reconnect before the will delay ran out cancels the will
        // (MQTT 5.0 §3.1.3.2.2).
        inner.pending_will = None;
        std::mem::replace(
            &mut inner.owner,
            Owner::Connected {
                conn_id,
                kick: Some(kick_tx),
            },
        )
    };
    let directory = broker.directory.as_ref();
    let resumed = match previous {
        Owner::Offline { state, mailbox } => Some((*state, mailbox)),
        // Not here: another node may have it (and a connection to kick,
        // even when this one starts clean).
        _ => match directory {
            Some(directory) => directory
                .claim(&client_id)
                .await
                .map(|moved| install(broker, moved)),
            None => None,
        },
    };
    drop(connect_guard);
    broker.sessions.checkin(&slot);

    let (mut state, mailbox, session_present) = match resumed {
        Some((state, mailbox)) if !clean_start => (state, mailbox, true),
        other => {
            if let Some((old, old_mailbox)) = other {
                discard(broker, old, &old_mailbox);
            } else {
                Metrics::inc(&broker.metrics.sessions);
            }
            let mailbox = new_mailbox(broker);
            let state = SessionState::new(mailbox.session_id, client_id, expiry);
            (state, mailbox, false)
        }
    };
    if let Some(directory) = directory {
        directory.register(&state.client_id);
    }
    slot.inner.lock().mailbox = Some(mailbox.clone());
    state.expiry_interval = expiry;
    mailbox.set_online(true);
    Opened {
        slot,
        conn_id,
        state,
        mailbox,
        session_present,
        kick: kick_rx,
    }
}

fn new_mailbox(broker: &Broker) -> Arc<Mailbox> {
    Arc::new(Mailbox::with_limits(
        broker.sessions.new_session_id(),
        broker.mailbox_limits.clone(),
    ))
}

/// Kicks the connection that owns `slot` (if any) and waits, bounded, for
/// it to give the session back. The caller holds the slot's connect lock.
async fn evict_connection(slot: &Slot) {
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        let kick = match &mut slot.inner.lock().owner {
            Owner::Connected { kick, .. } => kick.take(),
            _ => return,
        };
        if let Some(kick) = kick {
            let _ = kick.send(Kick::TakenOver);
        }
        if tokio::time::timeout_at(deadline, slot.released.notified())
            .await
            .is_err()
        {
            warn!(client_id = %slot.client_id, "previous connection did not release the session in time; taking it");
            return;
        }
    }
}

/// Makes a session that came from another node live here: a local session
/// id, its subscriptions in the router, its queue in a new mailbox.
fn install(broker: &Broker, moved: MovedSession) -> (SessionState, Arc<Mailbox>) {
    let mailbox = new_mailbox(broker);
    let mut state = moved.state;
    state.id = mailbox.session_id;
    // Another node's limits may differ: a subscription this node could not
    // have granted is dropped rather than indexed.
    let limits = broker.config.topic_limits();
    state.subscriptions.retain(|filter, _| {
        let admitted = limits.admit(filter) && parse_filter(filter).is_ok();
        if !admitted {
            warn!(client_id = %state.client_id, filter_bytes = filter.len(), "moved session's subscription breaks this node's topic limits: dropped");
        }
        admitted
    });
    for (filter, subscription) in &state.subscriptions {
        if let Ok(parsed) = parse_filter(filter) {
            let subscriber = Subscriber {
                mailbox: mailbox.clone(),
                options: subscription.options,
                identifier: subscription.identifier,
            };
            broker.router.subscribe(&parsed, state.id, subscriber);
        }
    }
    mailbox.unpop(moved.queued);
    // The old node redirects what still reaches it for a while; the same
    // messages may also come here directly once our routes are known.
    mailbox.deduplicate_for(HANDOVER_GRACE * 2);
    Metrics::inc(&broker.metrics.sessions);
    debug!(client_id = %state.client_id, "session arrived from another node");
    (state, mailbox)
}

/// How long a node that gave a session away keeps its routes and redirects
/// what still arrives for it, so that nothing published while the routes
/// move is lost: many times the route propagation delay.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(3);

/// Gives up the session of `client_id` to node `to`: its connection (if
/// any) is kicked with 0x8E and its state and queue are returned. For
/// [`HANDOVER_GRACE`] its subscriptions stay here and whatever they still
/// receive is redirected to `to`; then they leave the router. `None` when
/// this node has no session for the client (a connection without a
/// persistent session ends with it).
pub async fn surrender(broker: &Arc<Broker>, client_id: &str, to: NodeId) -> Option<MovedSession> {
    give_away(broker, client_id, to, WillOnMove::Cancel).await
}

/// What happens to a session's delayed will when the session moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillOnMove {
    /// A client connected elsewhere: its will is void (MQTT 5.0 §3.1.3.2.2).
    Cancel,
    /// The node drains: the will goes with the session, still pending.
    Keep,
}

/// Gives the session of `client_id` to node `to` (see [`surrender`]).
pub async fn give_away(
    broker: &Arc<Broker>,
    client_id: &str,
    to: NodeId,
    will: WillOnMove,
) -> Option<MovedSession> {
    let slot = broker.sessions.lookup(client_id)?;
    let taken = {
        let _connect_guard = slot.connect_lock.lock().await;
        evict_connection(&slot).await;
        let mut inner = slot.inner.lock();
        inner.next_generation();
        let pending_will = inner
            .pending_will
            .take()
            .filter(|_| will == WillOnMove::Keep);
        match std::mem::replace(&mut inner.owner, Owner::Vacant) {
            Owner::Offline { mut state, mailbox } => {
                inner.mailbox = None;
                state.will = pending_will;
                Some((*state, mailbox))
            }
            other => {
                inner.owner = other;
                None
            }
        }
    };
    broker.sessions.checkin(&slot);
    let (state, mailbox) = taken?;
    let queued: Vec<_> = mailbox.take_all().into();
    let subscriptions: Vec<ByteString> = state.subscriptions.keys().cloned().collect();
    Metrics::inc(&broker.metrics.handovers_active);
    tokio::spawn(redirect_during_grace(
        broker.clone(),
        Arc::from(client_id),
        to,
        state.id,
        mailbox,
        subscriptions,
    ));
    Metrics::dec(&broker.metrics.sessions);
    if let Some(directory) = broker.directory.as_ref() {
        directory.unregister(client_id);
    }
    debug!(client_id, "session handed to another node");
    Some(MovedSession { state, queued })
}

/// The forwarding stub a moved session leaves behind.
async fn redirect_during_grace(
    broker: Arc<Broker>,
    client_id: Arc<str>,
    to: NodeId,
    session: crate::message::SessionId,
    mailbox: Arc<Mailbox>,
    subscriptions: Vec<ByteString>,
) {
    // Online, so that every push wakes this task.
    mailbox.set_online(true);
    let redirect_queued = || {
        for delivery in mailbox.take_all() {
            broker.router.redirect(&to, &client_id, delivery);
        }
    };
    let deadline = tokio::time::Instant::now() + HANDOVER_GRACE;
    loop {
        tokio::select! {
            _ = mailbox.notified() => redirect_queued(),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    for filter in &subscriptions {
        if let Ok(parsed) = parse_filter(filter) {
            broker.router.unsubscribe(&parsed, session);
        }
    }
    redirect_queued();
    mailbox.set_online(false);
    Metrics::dec(&broker.metrics.handovers_active);
}

/// Takes in a session another node gives away (it drains): the session
/// waits here for its client, with its expiry and pending will re-armed.
/// Returns false when this node already has a session for the client (the
/// client came back here first: that session is newer and stays).
pub async fn adopt(broker: &Arc<Broker>, mut moved: MovedSession) -> bool {
    let client_id = moved.state.client_id.clone();
    let slot = broker.sessions.checkout(&client_id);
    let adopted = {
        let _connect_guard = slot.connect_lock.lock().await;
        if matches!(slot.inner.lock().owner, Owner::Vacant) {
            let limits = broker.config.topic_limits();
            let will = moved.state.will.take().filter(|w| limits.admit(&w.topic));
            let (state, mailbox) = install(broker, moved);
            let expiry = state.expiry_interval;
            let will_after = will.as_ref().map(|w| {
                let delay = w.properties.will_delay_interval.unwrap_or(0).min(expiry);
                Duration::from_secs(u64::from(delay))
            });
            let generation = {
                let mut inner = slot.inner.lock();
                inner.next_generation();
                inner.pending_will = will;
                inner.mailbox = Some(mailbox.clone());
                inner.owner = Owner::Offline {
                    state: Box::new(state),
                    mailbox,
                };
                inner.generation
            };
            if let Some(directory) = broker.directory.as_ref() {
                directory.register(&client_id);
            }
            arm_timers(broker.clone(), slot.clone(), generation, will_after, expiry);
            true
        } else {
            false
        }
    };
    broker.sessions.checkin(&slot);
    adopted
}

/// How a connection ended, as far as the session is concerned.
pub struct Closing {
    /// The will to publish (immediately or after its delay); `None` after a
    /// normal DISCONNECT.
    pub will: Option<Box<LastWill>>,
    /// Session Expiry Interval in force when the connection ended.
    pub expiry: u32,
}

/// Gives the session back after its connection ended.
pub fn close(
    broker: &Arc<Broker>,
    slot: &Arc<Slot>,
    conn_id: u64,
    mut state: SessionState,
    mailbox: Arc<Mailbox>,
    closing: Closing,
) {
    mailbox.set_online(false);
    state.expiry_interval = closing.expiry;
    state.will = None;
    redistribute_shared(broker, &mut state, &mailbox);

    let will_delay = closing
        .will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);
    let mut will_now = None;
    let mut ended = None;
    let mut timer = None;
    {
        let mut inner = slot.inner.lock();
        let still_owner =
            matches!(inner.owner, Owner::Connected { conn_id: c, .. } if c == conn_id);
        if !still_owner {
            // A connect gave up waiting for us and replaced the session.
            ended = Some((state, mailbox));
            will_now = closing.will;
        } else if closing.expiry == 0 {
            inner.owner = Owner::Vacant;
            inner.mailbox = None;
            inner.next_generation();
            ended = Some((state, mailbox));
            // The session ends now, so the will cannot wait any longer.
            will_now = closing.will;
        } else {
            inner.next_generation();
            if will_delay == 0 {
                will_now = closing.will;
            } else {
                inner.pending_will = closing.will;
            }
            inner.owner = Owner::Offline {
                state: Box::new(state),
                mailbox,
            };
            timer = Some((inner.generation, inner.pending_will.is_some()));
        }
    }
    slot.released.notify_one();

    if let Some(will) = will_now {
        publish_will(broker, &will);
    }
    if let Some((state, mailbox)) = ended {
        discard(broker, state, &mailbox);
        Metrics::dec(&broker.metrics.sessions);
        broker.sessions.remove_if_vacant(slot);
        // Only if no connection took the slot meanwhile: its registration
        // is the same key.
        let vacant = matches!(slot.inner.lock().owner, Owner::Vacant);
        if let Some(directory) = broker.directory.as_ref().filter(|_| vacant) {
            directory.unregister(&slot.client_id);
        }
    }
    if let Some((generation, has_will)) = timer {
        let will_after =
            has_will.then(|| Duration::from_secs(u64::from(will_delay.min(closing.expiry))));
        arm_timers(
            broker.clone(),
            slot.clone(),
            generation,
            will_after,
            closing.expiry,
        );
    }
}

/// Runs the will-delay and session-expiry clocks of an offline session.
fn arm_timers(
    broker: Arc<Broker>,
    slot: Arc<Slot>,
    generation: u64,
    will_after: Option<Duration>,
    expiry: u32,
) {
    // u32::MAX means the session never expires (MQTT 5.0 §3.1.2.11.2).
    let expire_after = (expiry != u32::MAX).then(|| Duration::from_secs(u64::from(expiry)));
    if will_after.is_none() && expire_after.is_none() {
        return;
    }
    let gauge = TimerGauge::new(&broker);
    let task_slot = slot.clone();
    let timer = tokio::spawn(async move {
        // Dropped with the task, also when a new generation aborts it.
        let _gauge = gauge;
        let slot = task_slot;
        let start = tokio::time::Instant::now();
        if let Some(delay) = will_after {
            tokio::select! {
                _ = tokio::time::sleep_until(start + delay) => {}
                _ = broker.shutdown.cancelled() => {}
            }
            let will = {
                let mut inner = slot.inner.lock();
                if inner.generation != generation {
                    return;
                }
                inner.pending_will.take()
            };
            if let Some(will) = will {
                publish_will(&broker, &will);
            }
        }
        let Some(expire_after) = expire_after else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(start + expire_after) => {}
            _ = broker.shutdown.cancelled() => return,
        }
        let ended = {
            let mut inner = slot.inner.lock();
            if inner.generation != generation {
                return;
            }
            inner.expire_generation();
            match std::mem::replace(&mut inner.owner, Owner::Vacant) {
                Owner::Offline { state, mailbox } => {
                    inner.mailbox = None;
                    Some((*state, mailbox, inner.pending_will.take()))
                }
                other => {
                    inner.owner = other;
                    None
                }
            }
        };
        if let Some((state, mailbox, will)) = ended {
            debug!(client_id = %slot.client_id, "session expired");
            if let Some(will) = will {
                publish_will(&broker, &will);
            }
            discard(&broker, state, &mailbox);
            Metrics::dec(&broker.metrics.sessions);
            broker.sessions.remove_if_vacant(&slot);
            let vacant = matches!(slot.inner.lock().owner, Owner::Vacant);
            if let Some(directory) = broker.directory.as_ref().filter(|_| vacant) {
                directory.unregister(&slot.client_id);
            }
        }
    });
    slot.inner
        .lock()
        .set_timer(generation, timer.abort_handle());
}

/// Counts a live timer task in `session_timers` for as long as it lives.
struct TimerGauge(Arc<Broker>);

impl TimerGauge {
    fn new(broker: &Arc<Broker>) -> TimerGauge {
        Metrics::inc(&broker.metrics.session_timers);
        TimerGauge(broker.clone())
    }
}

impl Drop for TimerGauge {
    fn drop(&mut self) {
        Metrics::dec(&self.0.metrics.session_timers);
    }
}

/// Publishes a will message as if its client had sent it.
pub fn publish_will(broker: &Broker, will: &LastWill) {
    let message = Arc::new(Message::from_will(will));
    if message.retain {
        // Refused when the retained store is full (counted): the will
        // still goes to those subscribed now.
        broker.router.retain(message.clone(), false);
    }
    broker.router.route(&message);
    Metrics::inc(&broker.metrics.wills_published);
}

/// Ends a session: its subscriptions leave the router and its
/// shared-subscription messages go to other members of their groups.
fn discard(broker: &Broker, mut state: SessionState, mailbox: &Arc<Mailbox>) {
    for filter in state.subscriptions.keys() {
        if let Ok(parsed) = parse_filter(filter) {
            broker.router.unsubscribe(&parsed, state.id);
        }
    }
    state.subscriptions.clear();
    redistribute_shared(broker, &mut state, mailbox);
}

/// Hands unacknowledged QoS 1 and queued shared-subscription messages of a
/// session whose client left to another member of the group, so the group
/// does not lose them (the client is not coming back soon, or at all).
fn redistribute_shared(broker: &Broker, state: &mut SessionState, mailbox: &Mailbox) {
    let id = state.id;
    state.outbound.retain(|o| {
        let Some(share) = o.delivery.share.clone() else {
            return true;
        };
        // QoS 2 once sent stays with this client: its delivery is
        // completed when the client reconnects (MQTT-4.8.2-4) and goes to
        // no other member even if the session ends first (MQTT-4.8.2-5);
        // the client may have it already. QoS 1 may go elsewhere as soon
        // as the connection is lost (§4.8.2).
        if o.delivery.qos == QoS::ExactlyOnce {
            return true;
        }
        let mut delivery = o.delivery.clone();
        delivery.share = Some(share.clone());
        !broker.router.redeliver_shared(&share, delivery, id)
    });
    // Only the shared ones are taken out: the rest (a retained backlog,
    // outside the queue's bounds, among them) stays as it is. Those no
    // other member takes go back to the front, in their order.
    let mut kept = Vec::new();
    for delivery in mailbox.take_shared() {
        match delivery.share.clone() {
            Some(share) if broker.router.redeliver_shared(&share, delivery.clone(), id) => {}
            _ => kept.push(delivery),
        }
    }
    if !kept.is_empty() {
        mailbox.unpop(kept);
    }
}

#[cfg(test)]
mod tests;
