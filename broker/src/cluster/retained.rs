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
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::convert::{Origins, from_wire, to_wire};
use super::keys::Keys;
use super::mirror::{Backoff, MirrorSink};
use crate::broker::Broker;
use crate::message::Message;
use crate::router::store::RetainedReplicator;

/// Largest retained message shared through etcd (etcd's default request
/// limit is 1.5 MiB). Larger ones stay on the node they were published on.
pub const MAX_SHARED_RETAINED: usize = 1024 * 1024;
const TXN_OPS: usize = 128;

pub struct RetainedWriter {
    keys: Keys,
    state: Mutex<Writes>,
    wake: Notify,
}

#[derive(Default)]
struct Writes {
    /// topic -> record to put, or `None` to delete.
    pending: HashMap<String, Option<Vec<u8>>>,
    local: LocalWrites,
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
}

impl LocalWrites {
    /// The topic was set here; returns the change's generation.
    fn begin(&mut self, topic: &str) -> u64 {
        self.next_generation += 1;
        let write = LocalWrite {
            generation: self.next_generation,
            revision: None,
        };
        self.topics.insert(topic.to_owned(), write);
        write.generation
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
        match self.topics.get(topic) {
            None => true,
            Some(write) if write.revision.is_some_and(|at| revision >= at) => {
                self.topics.remove(topic);
                true
            }
            Some(_) => false,
        }
    }

    /// The mirror holds every change up to `revision`: local changes
    /// written at or before it are etcd's too.
    fn caught_up(&mut self, revision: i64) {
        self.topics
            .retain(|_, write| write.revision.is_none_or(|at| at > revision));
    }
}

impl RetainedWriter {
    pub fn new(keys: Keys) -> Arc<RetainedWriter> {
        Arc::new(RetainedWriter {
            keys,
            state: Mutex::new(Writes::default()),
            wake: Notify::new(),
        })
    }

    pub async fn run(self: Arc<Self>, mut client: Client) {
        let mut backoff = Backoff::default();
        loop {
            // (topic, record, generation of the local change).
            let batch: Vec<(String, Option<Vec<u8>>, u64)> = {
                let mut state = self.state.lock();
                let Writes { pending, local } = &mut *state;
                let topics: Vec<String> = pending.keys().take(TXN_OPS).cloned().collect();
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
                    if let Some(revision) = response.header().map(|h| h.revision()) {
                        let local = &mut self.state.lock().local;
                        for (topic, _, generation) in &batch {
                            local.written(topic, *generation, revision);
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
    fn replicate(&self, message: &Arc<Message>) {
        let record = if message.payload.is_empty() {
            None
        } else if message.payload.len() > MAX_SHARED_RETAINED {
            warn!(topic = %message.topic, size = message.payload.len(), "retained message too large to share with the cluster; kept on this node only");
            return;
        } else {
            Some(encode(message))
        };
        let mut state = self.state.lock();
        state.local.begin(&message.topic);
        state.pending.insert(message.topic.to_string(), record);
        drop(state);
        self.wake.notify_one();
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

fn decode(value: &[u8]) -> Option<Arc<Message>> {
    let record = RetainedRecord::decode(value).ok()?;
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
        let messages = entries
            .iter()
            .filter(|(k, _)| self.keys.parse_retained(k).is_some())
            .filter_map(|(_, v)| decode(v))
            .collect();
        let mut state = self.writer.state.lock();
        state.local.caught_up(revision);
        // Local changes etcd does not have yet stay as they are here.
        let newer_here: Vec<&str> = state.local.topics.keys().map(String::as_str).collect();
        self.broker.router.replace_retained(messages, &newer_here);
    }

    fn put(&mut self, key: &str, value: &[u8], revision: i64) {
        if let Some(topic) = self.keys.parse_retained(key)
            && let Some(message) = decode(value)
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
        if let Some(topic) = self.keys.parse_retained(key) {
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
    fn events_older_than_a_local_change_are_kept_out_until_it_comes_back() {
        let mut local = LocalWrites::default();
        assert!(local.admit("t", 3), "no local change: etcd decides");
        let first = local.begin("t");
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
        let first = local.begin("t");
        let second = local.begin("t");
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
        let a = local.begin("a");
        let b = local.begin("b");
        local.begin("c");
        local.written("a", a, 5);
        local.written("b", b, 9);
        local.caught_up(7);
        let mut left: Vec<&str> = local.topics.keys().map(String::as_str).collect();
        left.sort();
        assert_eq!(left, ["b", "c"], "b written after 7, c not written yet");
    }
}
