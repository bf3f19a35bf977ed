//! Retained messages in etcd: `retained/<topic>` holds the message of the
//! topic. Every node mirrors the prefix into its local retained index, so a
//! subscription on any node finds a retained message published on any
//! other; setting or clearing one is written in the background, coalesced
//! per topic (the latest wins) and retried while etcd is away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use etcd_client::{Client, Txn, TxnOp};
use parking_lot::Mutex;
use prost::Message as _;
use starling_proto::v1::RetainedRecord;
use tokio::sync::{Notify, oneshot};
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::cluster::backoff::Backoff;
use crate::cluster::etcd::keys::Keys;
use crate::cluster::etcd::mirror::MirrorSink;
use crate::cluster::peer::wire::{Origins, from_wire, to_wire};
use crate::cluster::routes::sync::RouteSync;
use crate::config::TopicLimits;
use crate::message::{ForwardTicket, Message};
use crate::router::retained::RetainedStore;
use crate::router::store::RetainedReplicator;

/// Largest retained message shared through etcd (etcd's default request
/// limit is 1.5 MiB). Larger ones stay on the node they were published on.
pub const MAX_SHARED_RETAINED: usize = 1024 * 1024;
const TXN_OPS: usize = 128;
/// Record bytes per transaction beyond the first record: etcd refuses a
/// request over its limit, and a batch refused every time would never go.
const TXN_BYTES: usize = 512 * 1024;

pub struct RetainedWriter {
    keys: Keys,
    state: Mutex<Writes>,
    wake: Notify,
    /// Route sync, when on: publishers of retained messages may wait until
    /// every node serves what they published.
    sync: Option<Arc<RouteSync>>,
}

#[derive(Default)]
struct Writes {
    /// topic -> record to put, or `None` to delete.
    pending: HashMap<String, Option<Vec<u8>>>,
    local: LocalWrites,
    /// topic -> publishers waiting for the etcd revision of their write,
    /// with the generation of their local change.
    waiters: HashMap<String, Vec<(u64, oneshot::Sender<i64>)>>,
}

impl Writes {
    /// The waiters of `topic`'s changes up to `generation` stop waiting
    /// without a revision (it is not known).
    fn drop_waiters(&mut self, topic: &str, generation: u64) {
        if let Some(waiting) = self.waiters.get_mut(topic) {
            waiting.retain(|(waited, _)| *waited > generation);
            if waiting.is_empty() {
                self.waiters.remove(topic);
            }
        }
    }

    /// `topic`'s change `generation` is in etcd at `revision`: its waiters,
    /// and those of earlier changes (which a later value replaced before
    /// it was written), learn the revision.
    fn release_waiters(&mut self, topic: &str, generation: u64, revision: i64) {
        let Some(waiting) = self.waiters.get_mut(topic) else {
            return;
        };
        let mut kept = Vec::new();
        for (waited, sender) in waiting.drain(..) {
            if waited <= generation {
                let _ = sender.send(revision);
            } else {
                kept.push((waited, sender));
            }
        }
        if kept.is_empty() {
            self.waiters.remove(topic);
        } else {
            *waiting = kept;
        }
    }
}

/// Topics whose retained message was set on this node and whose write has
/// not come back through the watch yet. For them the local index is ahead
/// of etcd: an event from before the write (this node's own earlier write
/// coming back, or another node's older one) must not take it back, or a
/// subscription made meanwhile gets the older value after the newer one.
#[derive(Default)]
struct LocalWrites {
    topics: HashMap<String, LocalWrite>,
    next_generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LocalWrite {
    /// Which local change of the topic this is.
    generation: u64,
    /// The etcd revision it was written at, once known.
    revision: Option<i64>,
    /// The message is too large to share: etcd gets a delete, and the
    /// message stays here until a later change (etcd's or this node's).
    local_only: bool,
}

impl LocalWrites {
    /// The topic was set here; returns the change's generation.
    fn begin(&mut self, topic: &str, local_only: bool) -> u64 {
        self.next_generation += 1;
        let write = LocalWrite {
            generation: self.next_generation,
            revision: None,
            local_only,
        };
        self.topics.insert(topic.to_owned(), write);
        write.generation
    }

    /// The change `generation` of `topic` was written at a revision not
    /// known: from now on etcd decides.
    fn forget(&mut self, topic: &str, generation: u64) {
        if self
            .topics
            .get(topic)
            .is_some_and(|w| w.generation == generation && !w.local_only)
        {
            self.topics.remove(topic);
        }
    }

    /// The change `generation` of `topic` is in etcd at `revision` (unless
    /// a newer local change replaced it meanwhile).
    fn written(&mut self, topic: &str, generation: u64, revision: i64) {
        if let Some(write) = self.topics.get_mut(topic)
            && write.generation == generation
        {
            write.revision = Some(revision);
        }
    }

    /// Whether an etcd event of `topic` at `revision` may change the local
    /// index: yes unless a local change is newer than it.
    fn admit(&mut self, topic: &str, revision: i64) -> bool {
        let Some(write) = self.topics.get(topic) else {
            return true;
        };
        let Some(at) = write.revision else {
            return false;
        };
        // A message kept here only outlives the delete it wrote, and gives
        // way to anything after it.
        let newer = if write.local_only {
            revision > at
        } else {
            revision >= at
        };
        if newer {
            self.topics.remove(topic);
        }
        newer
    }

    /// The mirror holds every change up to `revision`: local changes
    /// written at or before it are etcd's too (but a message kept only
    /// here is not).
    fn caught_up(&mut self, revision: i64) {
        self.topics
            .retain(|_, write| write.local_only || write.revision.is_none_or(|at| at > revision));
    }
}

impl RetainedWriter {
    /// With route sync on (`sync`), retained publishes may ask for a
    /// ticket.
    pub fn new(keys: Keys, sync: Option<Arc<RouteSync>>) -> Arc<RetainedWriter> {
        Arc::new(RetainedWriter {
            keys,
            state: Mutex::new(Writes::default()),
            wake: Notify::new(),
            sync,
        })
    }

    pub async fn run(self: Arc<Self>, mut client: Client) {
        let mut backoff = Backoff::default();
        loop {
            // (topic, record, generation of the local change).
            let batch: Vec<(String, Option<Vec<u8>>, u64)> = {
                let mut state = self.state.lock();
                let Writes { pending, local, .. } = &mut *state;
                let mut bytes = 0;
                let topics: Vec<String> = pending
                    .iter()
                    .take(TXN_OPS)
                    .take_while(|(_, record)| {
                        let first = bytes == 0;
                        bytes += record.as_ref().map_or(0, Vec::len).max(1);
                        first || bytes <= TXN_BYTES
                    })
                    .map(|(topic, _)| topic.clone())
                    .collect();
                topics
                    .into_iter()
                    .filter_map(|t| pending.remove_entry(&t))
                    .map(|(topic, record)| {
                        let generation = local.topics.get(&topic).map_or(0, |w| w.generation);
                        (topic, record, generation)
                    })
                    .collect()
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(topic, record, _)| {
                    let key = self.keys.retained(topic);
                    match record {
                        Some(bytes) => TxnOp::put(key, bytes.clone(), None),
                        None => TxnOp::delete(key, None),
                    }
                })
                .collect();
            match client.txn(Txn::new().and_then(ops)).await {
                Ok(response) => {
                    backoff.reset();
                    debug!(changes = batch.len(), "retained messages written");
                    let revision = response.header().map(|h| h.revision());
                    let state = &mut *self.state.lock();
                    for (topic, _, generation) in &batch {
                        match revision {
                            Some(revision) => {
                                state.local.written(topic, *generation, revision);
                                state.release_waiters(topic, *generation, revision);
                            }
                            // Unknown: the waiters are let go (their
                            // tickets complete unconfirmed at once).
                            None => {
                                state.local.forget(topic, *generation);
                                state.drop_waiters(topic, *generation);
                            }
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "cannot write retained messages to etcd; will retry");
                    {
                        let pending = &mut self.state.lock().pending;
                        for (topic, record, _) in batch {
                            pending.entry(topic).or_insert(record);
                        }
                    }
                    backoff.wait().await;
                }
            }
        }
    }
}

impl RetainedReplicator for RetainedWriter {
    fn replicate(
        &self,
        message: &Arc<Message>,
        store_here: &mut dyn FnMut(),
        want_ticket: bool,
    ) -> Option<Arc<ForwardTicket>> {
        let too_large = message.payload.len() > MAX_SHARED_RETAINED;
        let record = if message.payload.is_empty() || too_large {
            // Too large: the other nodes drop the older message they have
            // rather than keep serving it as the topic's current one.
            None
        } else {
            Some(encode(message))
        };
        if too_large {
            warn!(topic = %message.topic, size = message.payload.len(), "retained message too large to share with the cluster; kept on this node only, cleared on the others");
        }
        let sync = self.sync.as_ref().filter(|_| want_ticket);
        let mut state = self.state.lock();
        let generation = state.local.begin(&message.topic, too_large);
        state.pending.insert(message.topic.to_string(), record);
        // Under the lock: an event from etcd is applied either before (and
        // overwritten now) or after, against the change just begun.
        store_here();
        let written = sync.map(|_| {
            let (sender, receiver) = oneshot::channel();
            state
                .waiters
                .entry(message.topic.to_string())
                .or_default()
                .push((generation, sender));
            receiver
        });
        drop(state);
        self.wake.notify_one();
        // A too-large message waits for its delete: the other nodes then
        // serve no value, which is what the cluster serves.
        sync.zip(written)
            .map(|(sync, written)| sync.retained_ticket(written))
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode(message: &Message) -> Vec<u8> {
    let now = Instant::now();
    // Expiry travels as wall-clock time: nodes share a clock, not an Instant.
    let expires_at_ms = message.expires_at.map_or(0, |at| {
        unix_ms(SystemTime::now() + at.saturating_duration_since(now)).max(1)
    });
    RetainedRecord {
        // Retained copies need no cluster identity: nothing deduplicates them.
        message: Some(to_wire(message, &Bytes::new())),
        expires_at_ms,
    }
    .encode_to_vec()
}

/// The message of a `retained/<topic>` record, unless it expired or is not
/// one this node may hold: a record that breaks this node's topic limits
/// (written by a node with other limits, or by hand) is skipped and logged.
/// Every node reads every record, so one bad record must never be fatal.
fn decode(topic: &str, value: &[u8], limits: TopicLimits) -> Option<Arc<Message>> {
    if !limits.admit(topic) {
        warn!(
            topic_bytes = topic.len(),
            topic_levels = starling_codec::topic::level_count(topic),
            "retained record in etcd breaks max_topic_length or max_topic_levels: skipped"
        );
        return None;
    }
    let Ok(record) = RetainedRecord::decode(value) else {
        warn!(topic, "retained record in etcd cannot be decoded: skipped");
        return None;
    };
    let mut wire = record.message?;
    if record.expires_at_ms > 0 {
        let left_ms = record
            .expires_at_ms
            .saturating_sub(unix_ms(SystemTime::now()));
        if left_ms == 0 {
            return None;
        }
        wire.message_expiry_interval = Some(
            u32::try_from(Duration::from_millis(left_ms).as_secs().max(1)).unwrap_or(u32::MAX),
        );
    } else {
        wire.message_expiry_interval = None;
    }
    let mut message = from_wire(wire, &mut Origins::new(Arc::from("")))?.message;
    if message.topic != topic {
        warn!(
            topic,
            "retained record in etcd holds a message of another topic: skipped"
        );
        return None;
    }
    // Just made, so not shared yet.
    let own = Arc::get_mut(&mut message)?;
    own.retain = true;
    // Its own allocation: a retained message may stay for a long time.
    own.payload = Bytes::copy_from_slice(&own.payload);
    Some(message)
}

/// Mirrors `retained/` into the local retained index. Changes are applied
/// under the writer's lock, so that a local change starting at the same
/// moment is either seen (and wins) or comes after.
pub struct RetainedSink {
    pub broker: Arc<Broker>,
    pub keys: Keys,
    pub writer: Arc<RetainedWriter>,
}

impl MirrorSink for RetainedSink {
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>, revision: i64) {
        // Built before taking any lock: it may hold many messages.
        let mut fresh = RetainedStore::default();
        let limits = self.broker.config.topic_limits();
        for message in entries
            .iter()
            .filter_map(|(key, value)| decode(self.keys.parse_retained(key)?, value, limits))
        {
            fresh.set(message);
        }
        let replaced = {
            let mut state = self.writer.state.lock();
            state.local.caught_up(revision);
            // Local changes etcd does not have yet stay as they are here.
            let newer_here: Vec<&str> = state.local.topics.keys().map(String::as_str).collect();
            self.broker.router.replace_retained(fresh, &newer_here)
        };
        // The old index is freed outside the locks.
        drop(replaced);
    }

    fn put(&mut self, key: &str, value: &[u8], revision: i64) {
        if let Some(topic) = self.keys.parse_retained(key)
            && let Some(message) = decode(topic, value, self.broker.config.topic_limits())
        {
            let mut state = self.writer.state.lock();
            if state.local.admit(topic, revision) {
                self.broker.router.retain_local(message);
            }
        }
    }

    fn caught_up(&mut self, revision: i64) {
        self.writer.state.lock().local.caught_up(revision);
    }

    fn delete(&mut self, key: &str, revision: i64) {
        if let Some(topic) = self.keys.parse_retained(key)
            && self.broker.config.topic_limits().admit(topic)
        {
            let mut state = self.writer.state.lock();
            if !state.local.admit(topic, revision) {
                return;
            }
            let clear = Message::new(
                topic.into(),
                Bytes::new(),
                starling_codec::QoS::AtMostOnce,
                true,
                starling_codec::MessageProperties::default(),
                None,
            );
            self.broker.router.retain_local(Arc::new(clear));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_learns_the_revision_of_its_write_or_a_later_one() {
        let mut writes = Writes::default();
        let (first, mut first_rx) = oneshot::channel();
        let (second, mut second_rx) = oneshot::channel();
        let (other, mut other_rx) = oneshot::channel();
        writes
            .waiters
            .entry("t".into())
            .or_default()
            .push((1, first));
        writes
            .waiters
            .entry("t".into())
            .or_default()
            .push((3, second));
        writes
            .waiters
            .entry("u".into())
            .or_default()
            .push((2, other));
        // Generation 2 of "t" is written: the waiter of 1 (replaced by it)
        // is released, the one of 3 keeps waiting, "u" is not concerned.
        writes.release_waiters("t", 2, 100);
        assert_eq!(first_rx.try_recv(), Ok(100));
        assert!(second_rx.try_recv().is_err());
        assert!(other_rx.try_recv().is_err());
        writes.release_waiters("t", 3, 101);
        assert_eq!(second_rx.try_recv(), Ok(101));
        assert!(!writes.waiters.contains_key("t"));
        assert!(writes.waiters.contains_key("u"));
    }

    #[test]
    fn events_older_than_a_local_change_are_kept_out_until_it_comes_back() {
        let mut local = LocalWrites::default();
        assert!(local.admit("t", 3), "no local change: etcd decides");
        let first = local.begin("t", false);
        assert!(
            !local.admit("t", 4),
            "written nowhere yet: anything is older"
        );
        local.written("t", first, 10);
        assert!(!local.admit("t", 9), "before the write in etcd's order");
        assert!(local.admit("t", 10), "the write itself coming back");
        assert!(local.admit("t", 8), "done: etcd decides again");
    }

    #[test]
    fn a_newer_local_change_outranks_the_echo_of_an_older_one() {
        let mut local = LocalWrites::default();
        let first = local.begin("t", false);
        let second = local.begin("t", false);
        local.written("t", first, 10);
        assert!(!local.admit("t", 10), "the older change's echo");
        local.written("t", second, 12);
        assert!(
            !local.admit("t", 11),
            "another node's change between the two"
        );
        assert!(local.admit("t", 12));
    }

    #[test]
    fn catching_up_forgets_changes_etcd_has() {
        let mut local = LocalWrites::default();
        let a = local.begin("a", false);
        let b = local.begin("b", false);
        local.begin("c", false);
        local.written("a", a, 5);
        local.written("b", b, 9);
        local.caught_up(7);
        let mut left: Vec<&str> = local.topics.keys().map(String::as_str).collect();
        left.sort();
        assert_eq!(left, ["b", "c"], "b written after 7, c not written yet");
    }

    #[test]
    fn a_message_kept_only_here_outlives_its_delete_and_gives_way_after() {
        let mut local = LocalWrites::default();
        let big = local.begin("t", true);
        local.written("t", big, 10);
        assert!(
            !local.admit("t", 10),
            "the delete written for the other nodes"
        );
        local.caught_up(20);
        assert!(
            local.topics.contains_key("t"),
            "kept across catching up and resyncs"
        );
        assert!(local.admit("t", 21), "another node's later message");
        assert!(local.topics.is_empty());
    }

    #[test]
    fn a_write_at_an_unknown_revision_leaves_the_decision_to_etcd() {
        let mut local = LocalWrites::default();
        let first = local.begin("t", false);
        let second = local.begin("t", false);
        local.forget("t", first);
        assert!(!local.admit("t", 5), "a newer change is still on its way");
        local.forget("t", second);
        assert!(local.admit("t", 5));
    }
}
