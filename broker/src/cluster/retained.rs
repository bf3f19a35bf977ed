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
    /// topic -> record to put, or `None` to delete.
    pending: Mutex<HashMap<String, Option<Vec<u8>>>>,
    wake: Notify,
}

impl RetainedWriter {
    pub fn new(keys: Keys) -> Arc<RetainedWriter> {
        Arc::new(RetainedWriter {
            keys,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    pub async fn run(self: Arc<Self>, mut client: Client) {
        let mut backoff = Backoff::default();
        loop {
            let batch: Vec<(String, Option<Vec<u8>>)> = {
                let mut pending = self.pending.lock();
                let topics: Vec<String> = pending.keys().take(TXN_OPS).cloned().collect();
                topics
                    .into_iter()
                    .filter_map(|t| pending.remove_entry(&t))
                    .collect()
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(topic, record)| {
                    let key = self.keys.retained(topic);
                    match record {
                        Some(bytes) => TxnOp::put(key, bytes.clone(), None),
                        None => TxnOp::delete(key, None),
                    }
                })
                .collect();
            match client.txn(Txn::new().and_then(ops)).await {
                Ok(_) => {
                    backoff.reset();
                    debug!(changes = batch.len(), "retained messages written");
                }
                Err(error) => {
                    warn!(%error, "cannot write retained messages to etcd; will retry");
                    {
                        let mut pending = self.pending.lock();
                        for (topic, record) in batch {
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
        self.pending
            .lock()
            .insert(message.topic.to_string(), record);
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

/// Mirrors `retained/` into the local retained index.
pub struct RetainedSink {
    pub broker: Arc<Broker>,
    pub keys: Keys,
}

impl MirrorSink for RetainedSink {
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>) {
        let messages = entries
            .iter()
            .filter(|(k, _)| self.keys.parse_retained(k).is_some())
            .filter_map(|(_, v)| decode(v))
            .collect();
        self.broker.router.replace_retained(messages);
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        if self.keys.parse_retained(key).is_some()
            && let Some(message) = decode(value)
        {
            self.broker.router.retain_local(message);
        }
    }

    fn delete(&mut self, key: &str) {
        if let Some(topic) = self.keys.parse_retained(key) {
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
