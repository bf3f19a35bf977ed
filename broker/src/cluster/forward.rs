//! Peer links: one long-lived `Forward` stream from this node to each other
//! node. Publishes are queued per link (bounded), sent in batches, and
//! acknowledged per batch. A link that breaks reconnects with backoff;
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use starling_proto::v1::ForwardBatch;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::convert::{publish_to_wire, redirect_to_wire};
use super::mirror::Backoff;
use super::peer_client::{Peer, PeerChannels, PeerCredentials};
use crate::message::{Delivery, ForwardTicket, Message, ShareKey};
use crate::metrics::Metrics;
use crate::router::store::{Forwarder, NodeId};

/// Messages queued per peer link before new ones are dropped.
const LINK_QUEUE: usize = 64 * 1024;
/// Above this many queued messages a link holds its publishers back...
const LINK_HIGH_WATER: usize = 16 * 1024;
/// ...until it is down to this many.
const LINK_LOW_WATER: usize = 4 * 1024;
/// Messages per batch on the wire.
const BATCH: usize = 256;
/// Payload bytes per batch (one larger message still goes, alone): a batch
/// is one gRPC message, and a few large publishes must not exceed what the
/// receiver accepts in one.
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches sent and not yet acknowledged per link.
const BATCHES_IN_FLIGHT: usize = 16;

/// What a link carries.
enum Outgoing {
    /// A publish for the node's plain subscriptions (if `plain`) and the
    /// share groups it was chosen for.
    Publish {
        message: Arc<Message>,
        plain: bool,
        groups: Vec<Arc<ShareKey>>,
        ticket: Option<Arc<ForwardTicket>>,
    },
    /// A delivery for one session that moved to the node.
    Redirect {
        client_id: Arc<str>,
        delivery: Delivery,
    },
}

struct Link {
    endpoint: String,
    /// False once the node announced it is draining.
    serving: bool,
    queue: mpsc::Sender<Outgoing>,
    /// Notified when the queue is down to `LINK_LOW_WATER` (or the link
    /// is down or gone), for publishers held back.
    drained: Arc<Notify>,
    /// The stream to the node is up.
    up: Arc<AtomicBool>,
}

impl Link {
    fn queued(queue: &mpsc::Sender<Outgoing>) -> usize {
        LINK_QUEUE - queue.capacity()
    }
}

/// What membership knows of another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub endpoint: String,
    pub serving: bool,
}

pub struct PeerForwarder {
    own_node: Arc<str>,
    links: RwLock<HashMap<NodeId, Link>>,
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
    ) -> Arc<PeerForwarder> {
        Arc::new(PeerForwarder {
            own_node: Arc::from(own_node),
            links: RwLock::new(HashMap::new()),
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
                link.drained.notify_waiters();
                false
            }
        });
        for (node, PeerInfo { endpoint, serving }) in peers {
            if links.contains_key(node) {
                continue;
            }
            info!(%node, %endpoint, "opening peer link");
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let drained = Arc::new(Notify::new());
            let up = Arc::new(AtomicBool::new(false));
            tokio::spawn(run_link(
                LinkEnds {
                    own_node: self.own_node.clone(),
                    node: node.clone(),
                    endpoint: endpoint.clone(),
                    credentials: self.credentials.clone(),
                    metrics: self.metrics.clone(),
                    drained: drained.clone(),
                    up: up.clone(),
                },
                rx,
            ));
            links.insert(
                node.clone(),
                Link {
                    endpoint: endpoint.clone(),
                    serving: *serving,
                    queue: tx,
                    drained,
                    up,
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
    pub fn client_of(&self, node: &str) -> Result<Peer, String> {
        let endpoint = self
            .endpoint_of(node)
            .ok_or_else(|| format!("node {node} is not a live member"))?;
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

impl Outgoing {
    /// The bytes it adds to a batch, roughly.
    fn size(&self) -> usize {
        let message = match self {
            Outgoing::Publish { message, .. } => message,
            Outgoing::Redirect { delivery, .. } => &delivery.message,
        };
        message.payload.len() + message.topic.len()
    }

    fn ticket(&self) -> Option<&Arc<ForwardTicket>> {
        match self {
            Outgoing::Publish { ticket, .. } => ticket.as_ref(),
            Outgoing::Redirect { .. } => None,
        }
    }

    /// Counts a message that will not reach its node.
    fn lost(&self, metrics: &Metrics) {
        Metrics::inc(&metrics.forward_dropped);
        if let Some(ticket) = self.ticket() {
            ticket.complete(false);
        }
    }
}

impl PeerForwarder {
    /// Queues `item` for `node`; returns whether the link is congested.
    fn enqueue(&self, node: &NodeId, item: Outgoing) -> bool {
        let links = self.links.read();
        let Some(link) = links.get(node) else {
            drop(links);
            item.lost(&self.metrics);
            return false;
        };
        match link.queue.try_send(item) {
            // Counted by the link's task as it takes them, once per batch.
            Ok(()) => {
                link.up.load(Ordering::Acquire) && Link::queued(&link.queue) > LINK_HIGH_WATER
            }
            Err(
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item),
            ) => {
                drop(links);
                item.lost(&self.metrics);
                false
            }
        }
    }
}

impl Forwarder for PeerForwarder {
    fn forward(
        &self,
        node: &NodeId,
        message: &Arc<Message>,
        plain: bool,
        groups: Vec<Arc<ShareKey>>,
        ticket: Option<Arc<ForwardTicket>>,
    ) -> bool {
        let message = message.clone();
        self.enqueue(
            node,
            Outgoing::Publish {
                message,
                plain,
                groups,
                ticket,
            },
        )
    }

    fn drained(&self, node: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let link = self.links.read().get(node).map(|link| {
            (
                link.queue.downgrade(),
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
                match queue.upgrade() {
                    Some(queue)
                        if up.load(Ordering::Acquire) && Link::queued(&queue) > LINK_LOW_WATER => {}
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
        let client_id = client_id.clone();
        self.enqueue(
            node,
            Outgoing::Redirect {
                client_id,
                delivery,
            },
        );
    }
}

/// How often a held-back publisher looks at its link again if no
/// notification came.
const DRAIN_RECHECK: Duration = Duration::from_millis(100);

/// What a link's task needs besides its queue.
struct LinkEnds {
    own_node: Arc<str>,
    node: NodeId,
    endpoint: String,
    credentials: PeerCredentials,
    metrics: Arc<Metrics>,
    drained: Arc<Notify>,
    up: Arc<AtomicBool>,
}

/// Drives one link until its queue's sender is dropped (the node left).
async fn run_link(ends: LinkEnds, mut queue: mpsc::Receiver<Outgoing>) {
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
        match stream_to(&ends, &mut queue).await {
            StreamEnd::QueueClosed => return,
            StreamEnd::Failed { error, was_up } => {
                if was_up {
                    // A link that worked gets a quick first retry.
                    backoff.reset();
                }
                up.store(false, Ordering::Release);
                warn!(%node, %endpoint, %error, "peer link down; reconnecting");
                // While the link is down, what arrives for it is dropped:
                // forwarding on stale messages after a long partition would
                // deliver them late and out of order with newer traffic.
                while let Ok(item) = queue.try_recv() {
                    item.lost(metrics);
                }
                drained.notify_waiters();
                if queue.is_closed() {
                    // The node left the cluster while we were reconnecting.
                    return;
                }
                backoff.wait().await;
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

async fn stream_to(ends: &LinkEnds, queue: &mut mpsc::Receiver<Outgoing>) -> StreamEnd {
    let LinkEnds {
        own_node,
        node,
        endpoint,
        credentials,
        metrics,
        drained,
        up,
    } = ends;
    let mut client = match super::peer_client::connect(endpoint, credentials).await {
        Ok(client) => client,
        Err(error) => return failed(error),
    };
    let (batches, outgoing) = mpsc::channel::<ForwardBatch>(BATCHES_IN_FLIGHT);
    let mut acks = match client.forward(ReceiverStream::new(outgoing)).await {
        Ok(response) => response.into_inner(),
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

    // Every message published here names this node: one buffer, shared.
    let own_node = Bytes::copy_from_slice(own_node.as_bytes());
    let mut sequence = 0u64;
    let mut pending: Vec<Outgoing> = Vec::with_capacity(BATCH);
    let end = loop {
        if pending.is_empty() {
            tokio::select! {
                reason = &mut ack_reader => break StreamEnd::Failed { error: reason, was_up: true },
                received = queue.recv_many(&mut pending, BATCH) => {
                    if received == 0 {
                        break StreamEnd::QueueClosed;
                    }
                    Metrics::add(&metrics.forwarded, received as u64);
                    if queue.len() <= LINK_LOW_WATER {
                        drained.notify_waiters();
                    }
                }
            }
        }
        // Send what is pending, at most BATCH_BYTES of it per batch.
        let mut bytes = 0;
        let take = pending
            .iter()
            .take_while(|item| {
                bytes += item.size();
                bytes <= BATCH_BYTES
            })
            .count()
            .max(1);
        sequence += 1;
        let now = Instant::now();
        let tickets: Vec<Arc<ForwardTicket>> = pending[..take]
            .iter()
            .filter_map(|i| i.ticket().cloned())
            .collect();
        let batch = ForwardBatch {
            sequence,
            messages: pending
                .drain(..take)
                .map(|item| match item {
                    Outgoing::Publish {
                        message,
                        plain,
                        groups,
                        ..
                    } => publish_to_wire(&message, plain, &groups, now, &own_node),
                    Outgoing::Redirect {
                        client_id,
                        delivery,
                    } => redirect_to_wire(&client_id, &delivery, now, &own_node),
                })
                .collect(),
        };
        unacked.lock().push_back(Unacked {
            sequence,
            messages: batch.messages.len(),
            tickets,
        });
        if batches.send(batch).await.is_err() {
            break StreamEnd::Failed {
                error: "request stream closed".to_string(),
                was_up: true,
            };
        }
    };
    // Taken from the queue but not sent: lost with the stream too.
    for item in pending.drain(..) {
        item.lost(metrics);
    }
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
