//! Route sync: with `route_sync` on, a SUBACK waits until every other
//! node's route index holds the subscription's route, so that a message
//! published anywhere right after the SUBACK reaches the subscriber.
//!
//! The wait has two steps. The route's key must be in etcd (its revision R
//! comes from the write), then every peer must have mirrored `routes/` up
//! to R: the `AwaitRoutes` call answers once it has. Concurrent subscribes
//! share those calls: per peer, one call is in flight at a time, for the
//! highest revision anyone waits for, so a burst of ten thousand SUBSCRIBEs
//! costs a handful of calls, not ten thousand.
//!
//! A peer that cannot answer (partitioned, dying) is not waited for beyond
//! one failed call, and the whole wait is bounded by
//! `route_sync_timeout_secs`: after it the SUBACK goes anyway and the
//! route reaches the slow node later, as without route sync.
//!
//! Retained messages take the same way: the PUBACK of a retained QoS 1/2
//! publish waits until every peer's retained index holds the write (the
//! `retained/` mirror, asked with `AwaitRoutes` too), so that whoever
//! subscribes anywhere after the PUBACK gets that value.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use starling_proto::v1::{AwaitRoutesRequest, Mirror};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::cluster::etcd::leased_keys::LeasedKeys;
use crate::cluster::peer::links::PeerForwarder;
use crate::cluster::peer::{PeerCallError, answer_within};
use crate::message::ForwardTicket;
use crate::metrics::Metrics;
use crate::node::NodeId;

pub struct RouteSync {
    owned: Arc<LeasedKeys>,
    forwarder: Arc<PeerForwarder>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Per peer and mirror: independent, a slow retained mirror must not
    /// hold up routes.
    barriers: Mutex<HashMap<(NodeId, Mirror), Arc<Barrier>>>,
}

impl RouteSync {
    pub fn new(
        owned: Arc<LeasedKeys>,
        forwarder: Arc<PeerForwarder>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Arc<RouteSync> {
        Arc::new(RouteSync {
            owned,
            forwarder,
            metrics,
            timeout,
            barriers: Mutex::default(),
        })
    }

    /// A ticket completed once every peer holds the routes `keys` (or the
    /// wait gave up; the ticket never reports a failure: the subscription
    /// is granted either way).
    pub fn ticket(self: &Arc<Self>, keys: Vec<String>) -> Arc<ForwardTicket> {
        let ticket = ForwardTicket::new(1);
        let this = self.clone();
        let done = ticket.clone();
        tokio::spawn(async move {
            let synced = tokio::time::timeout(this.timeout, this.sync(&keys))
                .await
                .unwrap_or(false);
            if !synced {
                Metrics::inc(&this.metrics.route_sync_timeouts);
                warn!(
                    routes = keys.len(),
                    "route sync incomplete: SUBACK sent before every node confirmed the route"
                );
            }
            done.complete(true);
        });
        ticket
    }

    /// A ticket completed once every peer's retained index holds the write
    /// `written` reports (its etcd revision), or the wait gave up; like a
    /// SUBACK's, it never reports a failure: the message is retained
    /// either way.
    pub fn retained_ticket(
        self: &Arc<Self>,
        written: tokio::sync::oneshot::Receiver<i64>,
    ) -> Arc<ForwardTicket> {
        let ticket = ForwardTicket::new(1);
        let this = self.clone();
        let done = ticket.clone();
        tokio::spawn(async move {
            let confirm = async {
                match written.await {
                    Ok(revision) => this.confirm(Mirror::Retained, revision).await,
                    // The writer gave it up (a newer write of the topic
                    // releases its own waiters).
                    Err(_) => false,
                }
            };
            let synced = tokio::time::timeout(this.timeout, confirm)
                .await
                .unwrap_or(false);
            if !synced {
                Metrics::inc(&this.metrics.route_sync_timeouts);
                warn!(
                    "retained sync incomplete: PUBACK sent before every node confirmed the message"
                );
            }
            done.complete(true);
        });
        ticket
    }

    async fn sync(self: &Arc<Self>, keys: &[String]) -> bool {
        let mut revision = 0;
        for key in keys {
            // None: unsubscribed meanwhile, nothing to wait for.
            if let Some(written) = self.owned.written(key).await {
                revision = revision.max(written);
            }
        }
        if revision == 0 {
            return true;
        }
        debug!(revision, "routes written; confirming with peers");
        self.confirm(Mirror::Routes, revision).await
    }

    /// Waits until every live peer's `mirror` holds `revision`; false if
    /// one could not confirm it.
    async fn confirm(self: &Arc<Self>, mirror: Mirror, revision: i64) -> bool {
        let mut waits = JoinSet::new();
        for node in self.live_barriers(mirror) {
            let this = self.clone();
            waits.spawn(async move { node.reach(revision, &this).await });
        }
        let mut all = true;
        while let Some(result) = waits.join_next().await {
            all &= result.unwrap_or(false);
        }
        debug!(revision, all, ?mirror, "sync done");
        all
    }

    /// The barrier of every live peer for `mirror` (and forgets those of
    /// nodes gone).
    fn live_barriers(&self, mirror: Mirror) -> Vec<Arc<Barrier>> {
        let peers = self.forwarder.peers();
        let mut barriers = self.barriers.lock();
        barriers.retain(|(node, _), _| peers.contains(node));
        peers
            .into_iter()
            .map(|node| {
                barriers
                    .entry((node.clone(), mirror))
                    .or_insert_with(|| Arc::new(Barrier::new(node, mirror)))
                    .clone()
            })
            .collect()
    }

    /// One `AwaitRoutes` call: the revision the peer's `mirror` reached.
    async fn ask(&self, node: &str, mirror: Mirror, revision: i64) -> Result<i64, PeerCallError> {
        let mut peer = self.forwarder.client_of(node)?;
        let request = AwaitRoutesRequest {
            revision,
            timeout_ms: u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX),
            mirror: mirror.into(),
        };
        // The peer answers within `timeout_ms`; a second more covers the trip.
        let call = "AwaitRoutes";
        let after = self.timeout + Duration::from_secs(1);
        let answer = answer_within(call, after, peer.await_routes(request)).await?;
        // A peer of an older version answers for its routes whatever was
        // asked: it cannot confirm another mirror.
        if answer.mirror() != mirror {
            return Err(PeerCallError::BadAnswer {
                call,
                problem: format!("the peer cannot report on its {mirror:?} mirror"),
            });
        }
        Ok(answer.applied)
    }
}

/// What this node knows of one peer's route index.
struct Barrier {
    node: NodeId,
    mirror: Mirror,
    state: Mutex<BarrierState>,
    changed: Notify,
}

#[derive(Default)]
struct BarrierState {
    /// The peer's index holds every route up to this revision.
    confirmed: i64,
    /// The highest revision a waiter wants confirmed.
    wanted: i64,
    /// A call is in flight.
    asking: bool,
    /// Calls that failed so far: a waiter that sees this move gives up.
    failures: u64,
}

impl Barrier {
    fn new(node: NodeId, mirror: Mirror) -> Barrier {
        Barrier {
            node,
            mirror,
            state: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// Waits until the peer confirmed `revision`; false if a call failed.
    async fn reach(self: &Arc<Self>, revision: i64, sync: &Arc<RouteSync>) -> bool {
        let mut failures_before = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.confirmed >= revision {
                    return true;
                }
                if *failures_before.get_or_insert(state.failures) != state.failures {
                    return false;
                }
                state.wanted = state.wanted.max(revision);
                if !state.asking {
                    state.asking = true;
                    // A task of its own: a waiter that gives up must not
                    // cancel the call others wait on.
                    tokio::spawn(self.clone().ask_until_confirmed(sync.clone()));
                }
            }
            changed.await;
        }
    }

    /// Calls the peer until it confirmed what waiters want, or a call
    /// failed.
    async fn ask_until_confirmed(self: Arc<Self>, sync: Arc<RouteSync>) {
        loop {
            let target = self.state.lock().wanted;
            let answer = sync.ask(&self.node, self.mirror, target).await;
            debug!(node = %self.node, target, ?answer, "peer answered AwaitRoutes");
            let mut state = self.state.lock();
            let confirmed = match answer {
                Ok(applied) if applied >= target => {
                    state.confirmed = state.confirmed.max(applied);
                    true
                }
                Ok(applied) => {
                    debug!(node = %self.node, applied, target, "peer's route index did not catch up in time");
                    false
                }
                Err(error) => {
                    warn!(node = %self.node, %error, "cannot confirm routes with a peer");
                    false
                }
            };
            if !confirmed {
                state.failures += 1;
            }
            let again = confirmed && state.wanted > state.confirmed;
            if !again {
                state.asking = false;
            }
            drop(state);
            self.changed.notify_waiters();
            if !again {
                return;
            }
        }
    }
}
