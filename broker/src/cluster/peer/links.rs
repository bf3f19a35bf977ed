//! Peer links: one long-lived `Forward` stream from this node to each other
//! node. Publishes are queued per link (bounded, encoded as they are
//! queued: `link_queue`), sent in batches, and acknowledged per
//! batch. A link that breaks reconnects with backoff;
//! messages that could not be delivered (queue full, or in flight on a
//! stream that broke) are counted and logged.
//!
//! Backpressure: a link with more than `LINK_HIGH_WATER` messages queued
//! is *congested*; the connections publishing into it stop reading their
//! clients until it is back under `LINK_LOW_WATER`, as a single node's
//! publishers wait on TCP. The hard bound `LINK_QUEUE` leaves room for what
//! publishers had already read; only beyond it are messages dropped. A
//! link that is down holds nobody back: a partitioned node must not slow
//! the rest of the cluster, so what it cannot take is dropped and counted.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::cluster::backoff::Backoff;
use crate::cluster::peer::PeerCallError;
use crate::cluster::peer::client::{Peer, PeerChannels, PeerCredentials};
use crate::cluster::peer::link_queue::{Batch, LINK_QUEUE, LinkQueue};
use crate::cluster::peer::wire::{put_publish_entry, put_redirect_entry};
use crate::cluster::tasks::Tasks;
use crate::message::{Delivery, ForwardTicket, Message, ShareKey, Tracking};
use crate::metrics::Metrics;
use crate::node::NodeId;
use crate::read_mostly::ReadMostly;
use crate::router::gathered::{GATHER_LARGEST, GatheredForwards};
use crate::router::store::{Forwarded, Forwarder};

/// Above this many queued messages a link holds its publishers back...
const LINK_HIGH_WATER: usize = 16 * 1024;
/// ...until it is down to this many.
const LINK_LOW_WATER: usize = 4 * 1024;
/// Batches sent and not yet acknowledged per link.
const BATCHES_IN_FLIGHT: usize = 16;

const _: () = assert!(LINK_LOW_WATER < LINK_HIGH_WATER && LINK_HIGH_WATER < LINK_QUEUE);

struct Link {
    endpoint: String,
    /// False once the node announced it is draining.
    serving: bool,
    queue: Arc<LinkQueue>,
    /// Notified when the queue is down to `LINK_LOW_WATER` (or the link
    /// is down or gone), for publishers held back.
    drained: Arc<Notify>,
    /// The stream to the node is up.
    up: Arc<AtomicBool>,
    /// This node's name as messages published here carry it.
    own_node: Bytes,
}

impl Drop for Link {
    /// The node left: the link's task ends.
    fn drop(&mut self) {
        self.queue.close();
        self.drained.notify_waiters();
    }
}

/// What membership knows of another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub endpoint: String,
    pub serving: bool,
}

pub struct PeerForwarder {
    /// Where its links run.
    tasks: Tasks,
    own_node: Arc<str>,
    /// The same, as forwarded messages carry it.
    own_node_wire: Bytes,
    /// Looked up on every forward: foldhash rather than SipHash, behind a
    /// sharded lock (see [`ReadMostly`]).
    links: ReadMostly<HashMap<NodeId, Link, foldhash::fast::RandomState>>,
    credentials: PeerCredentials,
    metrics: Arc<Metrics>,
    /// Channels for unary calls to the same peers.
    channels: PeerChannels,
}

impl PeerForwarder {
    pub fn new(
        own_node: &str,
        credentials: PeerCredentials,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Arc<PeerForwarder> {
        Arc::new(PeerForwarder {
            tasks,
            own_node: Arc::from(own_node),
            own_node_wire: Bytes::copy_from_slice(own_node.as_bytes()),
            links: ReadMostly::default(),
            channels: PeerChannels::new(credentials.clone()),
            credentials,
            metrics,
        })
    }

    /// Makes the set of links match `peers` (node id -> peer endpoint):
    /// opens links to new nodes, closes links to nodes that left.
    pub fn set_peers(&self, peers: &HashMap<NodeId, PeerInfo>) {
        self.channels
            .retain(|address| peers.values().any(|peer| peer.endpoint == address));
        let mut links = self.links.write();
        links.retain(|node, link| match peers.get(node) {
            Some(peer) if peer.endpoint == link.endpoint => {
                link.serving = peer.serving;
                true
            }
            _ => {
                info!(%node, "closing peer link");
                false
            }
        });
        for (node, PeerInfo { endpoint, serving }) in peers {
            if links.contains_key(node) {
                continue;
            }
            info!(%node, %endpoint, "opening peer link");
            let queue = Arc::new(LinkQueue::default());
            let drained = Arc::new(Notify::new());
            let up = Arc::new(AtomicBool::new(false));
            self.tasks.spawn(run_link(
                LinkEnds {
                    node: node.clone(),
                    endpoint: endpoint.clone(),
                    credentials: self.credentials.clone(),
                    metrics: self.metrics.clone(),
                    drained: drained.clone(),
                    up: up.clone(),
                },
                queue.clone(),
            ));
            links.insert(
                node.clone(),
                Link {
                    endpoint: endpoint.clone(),
                    serving: *serving,
                    queue,
                    drained,
                    up,
                    own_node: Bytes::copy_from_slice(self.own_node.as_bytes()),
                },
            );
        }
    }

    /// The peer endpoint of a live member.
    pub fn endpoint_of(&self, node: &str) -> Option<String> {
        self.links
            .read()
            .get(node)
            .map(|link| link.endpoint.clone())
    }

    /// A client of a live member's `Peer` service for unary calls.
    pub fn client_of(&self, node: &str) -> Result<Peer, PeerCallError> {
        let endpoint = self
            .endpoint_of(node)
            .ok_or_else(|| PeerCallError::NotMember(NodeId::from(node)))?;
        self.channels.get(&endpoint)
    }

    /// Every other live member, draining or not.
    pub fn peers(&self) -> Vec<NodeId> {
        self.links.read().keys().cloned().collect()
    }

    /// Live members that are not draining: where sessions can go.
    pub fn serving_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .links
            .read()
            .iter()
            .filter(|(_, link)| link.serving)
            .map(|(node, _)| node.clone())
            .collect();
        peers.sort();
        peers
    }

    pub fn peer_count(&self) -> usize {
        self.links.read().len()
    }
}

/// Counts a message that will not reach its node, and fails what its
/// publisher waits on: its own ticket, or for a message that was to join
/// a batch's ticket, a failed one of its own.
fn lost(metrics: &Metrics, tracking: Tracking) -> Forwarded {
    Metrics::inc(&metrics.forward_dropped);
    let ticket = match tracking {
        Tracking::Untracked => None,
        Tracking::Own(ticket) => {
            ticket.complete(false);
            None
        }
        Tracking::Batch => {
            let ticket = ForwardTicket::new(1);
            ticket.complete(false);
            Some(ticket)
        }
    };
    Forwarded {
        congested: false,
        ticket,
    }
}

/// Counts the messages of batches that will not reach their node.
fn lost_batches(metrics: &Metrics, batches: Vec<Batch>) -> usize {
    let mut messages = 0;
    for batch in batches {
        messages += batch.messages;
        for ticket in batch.tickets {
            ticket.complete(false);
        }
    }
    Metrics::add(&metrics.forward_dropped, messages as u64);
    messages
}

impl PeerForwarder {
    /// Queues a message for `node`: `write` appends its wire encoding,
    /// given this node's name, and `size` is about how long that is.
    fn enqueue(
        &self,
        node: &NodeId,
        size: usize,
        tracking: Tracking,
        write: impl FnOnce(&Bytes, &mut BytesMut),
    ) -> Forwarded {
        let links = self.links.read();
        let Some(link) = links.get(node) else {
            drop(links);
            return lost(&self.metrics, tracking);
        };
        match link
            .queue
            .push(size, tracking, |body| write(&link.own_node, body))
        {
            // Counted by the link's task as it takes them, once per batch.
            Ok(pushed) => Forwarded {
                congested: link.up.load(Ordering::Acquire) && pushed.queued > LINK_HIGH_WATER,
                ticket: pushed.ticket,
            },
            Err((_, tracking)) => {
                drop(links);
                lost(&self.metrics, tracking)
            }
        }
    }
}

/// About how many bytes `message` takes on the wire.
fn wire_size(message: &Message) -> usize {
    // Topic and payload, and room for the rest of a usual message.
    message.topic.len() + message.payload.len() + 48
}

impl Forwarder for PeerForwarder {
    fn gather(
        &self,
        gathered: &mut GatheredForwards,
        node: &NodeId,
        message: &Message,
        plain: bool,
        groups: Vec<Arc<ShareKey>>,
    ) -> Option<NodeId> {
        if wire_size(message) > GATHER_LARGEST {
            // Alone, behind what was gathered before it.
            let earlier = self.queue_gathered(gathered);
            let forwarded = self.forward(node, message, plain, groups, Tracking::Untracked);
            return match forwarded.congested {
                true => Some(node.clone()),
                false => earlier,
            };
        }
        let gathering = gathered.for_node(node);
        put_publish_entry(
            message,
            plain,
            &groups,
            &self.own_node_wire,
            &mut gathering.entries,
        );
        gathering.messages += 1;
        match gathering.is_full() {
            true => self.queue_gathered(gathered),
            false => None,
        }
    }

    fn queue_gathered(&self, gathered: &mut GatheredForwards) -> Option<NodeId> {
        if gathered.is_empty() {
            return None;
        }
        let links = self.links.read();
        let mut congested = None;
        for gathering in gathered.take() {
            let queued = links.get(&gathering.node).map(|link| {
                (
                    link,
                    link.queue
                        .push_entries(&gathering.entries, gathering.messages),
                )
            });
            match queued {
                Some((link, Ok(queued))) => {
                    if link.up.load(Ordering::Acquire) && queued > LINK_HIGH_WATER {
                        congested = Some(gathering.node);
                    }
                }
                // Gone, down or full: as for a message queued alone.
                _ => Metrics::add(&self.metrics.forward_dropped, gathering.messages as u64),
            }
        }
        congested
    }

    fn forward(
        &self,
        node: &NodeId,
        message: &Message,
        plain: bool,
        groups: Vec<Arc<ShareKey>>,
        tracking: Tracking,
    ) -> Forwarded {
        self.enqueue(node, wire_size(message), tracking, |own_node, body| {
            put_publish_entry(message, plain, &groups, own_node, body)
        })
    }

    fn drained(&self, node: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let link = self.links.read().get(node).map(|link| {
            (
                Arc::downgrade(&link.queue),
                link.drained.clone(),
                link.up.clone(),
            )
        });
        Box::pin(async move {
            let Some((queue, drained, up)) = link else {
                return;
            };
            loop {
                let notified = drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match Weak::upgrade(&queue) {
                    Some(queue)
                        if !queue.is_closed()
                            && up.load(Ordering::Acquire)
                            && queue.len() > LINK_LOW_WATER => {}
                    // Drained, down, or gone (the node left).
                    _ => return,
                }
                // The notification comes from the link's task; the timeout
                // only guards against a link that stops without one.
                let _ = tokio::time::timeout(DRAIN_RECHECK, notified).await;
            }
        })
    }

    fn redirect(&self, node: &NodeId, client_id: &Arc<str>, delivery: Delivery) {
        let size = wire_size(&delivery.message) + client_id.len();
        self.enqueue(node, size, Tracking::Untracked, |own_node, body| {
            put_redirect_entry(client_id, &delivery, own_node, body)
        });
    }
}

/// How often a held-back publisher looks at its link again if no
/// notification came.
const DRAIN_RECHECK: Duration = Duration::from_millis(100);

/// What a link's task needs besides its queue.
struct LinkEnds {
    node: NodeId,
    endpoint: String,
    credentials: PeerCredentials,
    metrics: Arc<Metrics>,
    drained: Arc<Notify>,
    up: Arc<AtomicBool>,
}

/// Drives one link until its queue closes (the node left).
async fn run_link(ends: LinkEnds, queue: Arc<LinkQueue>) {
    let LinkEnds {
        node,
        endpoint,
        metrics,
        drained,
        up,
        ..
    } = &ends;
    let mut backoff = Backoff::default();
    loop {
        match stream_to(&ends, &queue).await {
            StreamEnd::QueueClosed => return,
            StreamEnd::Failed { error, was_up } => {
                if was_up {
                    // A link that worked gets a quick first retry.
                    backoff.reset();
                }
                up.store(false, Ordering::Release);
                warn!(%node, %endpoint, %error, "peer link down; reconnecting");
                // Until the next attempt, what comes for the link is
                // dropped, and so is what was queued.
                lost_batches(metrics, queue.stop_accepting());
                drained.notify_waiters();
                if queue.is_closed() {
                    // The node left the cluster while we were reconnecting.
                    return;
                }
                backoff.wait().await;
                if queue.is_closed() {
                    return;
                }
                queue.start_accepting();
            }
        }
    }
}

/// A batch sent on a stream and not acknowledged yet.
struct Unacked {
    sequence: u64,
    messages: usize,
    tickets: Vec<Arc<ForwardTicket>>,
}

enum StreamEnd {
    QueueClosed,
    Failed { error: String, was_up: bool },
}

fn failed(error: impl ToString) -> StreamEnd {
    StreamEnd::Failed {
        error: error.to_string(),
        was_up: false,
    }
}

async fn stream_to(ends: &LinkEnds, queue: &LinkQueue) -> StreamEnd {
    let LinkEnds {
        node,
        endpoint,
        credentials,
        metrics,
        drained,
        up,
        ..
    } = ends;
    let mut client =
        match crate::cluster::peer::client::connect_forward(endpoint, credentials).await {
            Ok(client) => client,
            Err(error) => return failed(error),
        };
    let (batches, outgoing) = mpsc::channel::<Bytes>(BATCHES_IN_FLIGHT);
    let mut acks = match client.forward(ReceiverStream::new(outgoing)).await {
        Ok(acks) => acks,
        Err(status) => return failed(status),
    };
    info!(%node, %endpoint, "peer link up");
    up.store(true, Ordering::Release);

    // Each batch awaiting its ack: sequence, size, and the tickets of its
    // messages that wait for this node's acknowledgement.
    let unacked: Arc<Mutex<VecDeque<Unacked>>> = Arc::default();
    let ack_reader = {
        let unacked = unacked.clone();
        async move {
            loop {
                match acks.message().await {
                    Ok(Some(ack)) => {
                        let mut unacked = unacked.lock();
                        while unacked.front().is_some_and(|u| u.sequence <= ack.sequence) {
                            if let Some(batch) = unacked.pop_front() {
                                for ticket in batch.tickets {
                                    ticket.complete(true);
                                }
                            }
                        }
                    }
                    Ok(None) => return "peer closed the stream".to_string(),
                    Err(status) => return status.to_string(),
                }
            }
        }
    };
    tokio::pin!(ack_reader);

    let mut sequence = 0u64;
    let end = loop {
        let batch = tokio::select! {
            reason = &mut ack_reader => break StreamEnd::Failed { error: reason, was_up: true },
            batch = queue.next() => match batch {
                Some(batch) => batch,
                None => break StreamEnd::QueueClosed,
            },
        };
        Metrics::add(&metrics.forwarded, batch.messages as u64);
        if queue.len() <= LINK_LOW_WATER {
            drained.notify_waiters();
        }
        sequence += 1;
        let messages = batch.messages;
        let (body, tickets) = batch.finish(sequence);
        unacked.lock().push_back(Unacked {
            sequence,
            messages,
            tickets,
        });
        if batches.send(body).await.is_err() {
            break StreamEnd::Failed {
                error: "request stream closed".to_string(),
                was_up: true,
            };
        }
    };
    let mut lost = 0;
    for batch in unacked.lock().drain(..) {
        lost += batch.messages;
        for ticket in batch.tickets {
            ticket.complete(false);
        }
    }
    if lost > 0 {
        Metrics::add(&metrics.forward_dropped, lost as u64);
        warn!(%node, lost, "messages in flight to a peer were lost with its stream");
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message for a node without a link is lost: what its publisher
    /// waits on fails at once, whether its own ticket or, in place of a
    /// batch's, a failed one made for it.
    #[test]
    fn a_message_for_a_node_without_a_link_fails_its_ticket() {
        let metrics = Arc::new(Metrics::default());
        let forwarder = PeerForwarder::new(
            "n1",
            PeerCredentials::default(),
            metrics.clone(),
            Tasks::default(),
        );
        let node: NodeId = Arc::from("n2");
        let message = Arc::new(Message::new(
            "t".into(),
            Bytes::from_static(b"x"),
            starling_codec::QoS::AtLeastOnce,
            false,
            crate::message::MessageProperties::default(),
            None,
        ));

        let forwarded = forwarder.forward(&node, &message, true, Vec::new(), Tracking::Batch);
        let Some(ticket) = forwarded.ticket else {
            panic!("a batch-tracked message gets a ticket even when lost");
        };
        assert!(ticket.is_done() && !ticket.delivered());

        let own = ForwardTicket::new(2);
        let forwarded = forwarder.forward(
            &node,
            &message,
            true,
            Vec::new(),
            Tracking::Own(own.clone()),
        );
        assert!(forwarded.ticket.is_none());
        assert!(
            !own.is_done() && !own.delivered(),
            "one of its two targets failed"
        );

        let forwarded = forwarder.forward(&node, &message, true, Vec::new(), Tracking::Untracked);
        assert!(forwarded.ticket.is_none() && !forwarded.congested);
        assert_eq!(metrics.forward_dropped.load(Ordering::Relaxed), 3);
    }
}
