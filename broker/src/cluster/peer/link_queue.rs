//! The queue of one peer link: messages are encoded for the wire as they
//! are queued, by the connection that routes them, straight into the
//! batch that will go out, and the link's task only hands whole batches
//! to the stream. (Or into the connection's own gathering first, queued
//! once per read with [`LinkQueue::push_entries`]; see
//! [`crate::router::gathered`].)
//!
//! Why encode at enqueue: queuing the message itself meant a channel send,
//! a reference count taken on one core and dropped on another, and then
//! building and encoding the protobuf struct in the link's task — together
//! more CPU than routing the publish. Encoded here, the message's memory
//! is touched only by the core that received it.
//!
//! A batch's body is the encoding of a `ForwardBatch` without its
//! `sequence` (protobuf fields may come in any order; the link appends the
//! sequence when it sends the batch): each message is one entry of the
//! repeated `messages` field.
//!
//! The Message Expiry Interval is computed when a message is queued, so
//! the time it then spends in the queue is not deducted. That time is
//! bounded: the link holds its publishers back past `LINK_HIGH_WATER`, and
//! a link that is down takes nothing (see [`LinkQueue::stop_accepting`]).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use prost::Message as _;
use starling_proto::v1::ForwardBatch;
use tokio::sync::Notify;

use crate::message::{ForwardTicket, Tracking};

/// Messages queued per peer link before new ones are dropped.
pub const LINK_QUEUE: usize = 64 * 1024;
/// Messages per batch on the wire.
const BATCH: usize = 256;
/// Bytes per batch (one larger message still goes, alone): a batch is one
/// gRPC message, and a few large publishes must not exceed what the
/// receiver accepts in one.
const BATCH_BYTES: usize = 1024 * 1024;
/// Room a new batch starts with: 256 small messages fit.
const BATCH_START: usize = 32 * 1024;

/// Encoded messages that go out together, with the tickets of those that
/// wait for the peer's acknowledgement.
pub struct Batch {
    body: BytesMut,
    pub messages: usize,
    /// Completed when the peer acknowledges the batch (or fails with it):
    /// the messages' own tickets, and the batch's shared one.
    pub tickets: Vec<Arc<ForwardTicket>>,
    /// The ticket shared by its messages that go to this node only, made
    /// by the first of them (and also in `tickets`).
    shared: Option<Arc<ForwardTicket>>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            body: BytesMut::with_capacity(BATCH_START),
            messages: 0,
            tickets: Vec::new(),
            shared: None,
        }
    }

    /// The ticket the messages of this batch that want one share.
    fn shared_ticket(&mut self) -> Arc<ForwardTicket> {
        let tickets = &mut self.tickets;
        self.shared
            .get_or_insert_with(|| {
                let ticket = ForwardTicket::new(1);
                tickets.push(ticket.clone());
                ticket
            })
            .clone()
    }

    fn is_full(&self) -> bool {
        self.messages >= BATCH || self.body.len() >= BATCH_BYTES
    }

    /// The encoded `ForwardBatch` numbered `sequence`.
    pub fn finish(mut self, sequence: u64) -> (bytes::Bytes, Vec<Arc<ForwardTicket>>) {
        let header = ForwardBatch {
            sequence,
            messages: Vec::new(),
        };
        // Encoding into a BytesMut cannot run out of room.
        let _ = header.encode(&mut self.body);
        (self.body.freeze(), self.tickets)
    }
}

struct Queued {
    /// Full batches, oldest first.
    sealed: VecDeque<Batch>,
    /// The batch messages are added to.
    open: Batch,
    /// Messages in `sealed` and `open`.
    messages: usize,
    /// False while the link is down: what comes is refused.
    accepting: bool,
    /// The link is gone (its node left).
    closed: bool,
}

/// A message queued.
#[derive(Debug)]
pub struct Pushed {
    /// Messages queued now, this one included.
    pub queued: usize,
    /// For [`Tracking::Batch`]: the ticket of the batch it joined.
    pub ticket: Option<Arc<ForwardTicket>>,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `LINK_QUEUE` messages.
    Full,
    /// The link is down or gone.
    Down,
}

pub struct LinkQueue {
    state: Mutex<Queued>,
    /// Wakes the link's task when a message comes into an empty queue, or
    /// the queue closes.
    ready: Notify,
}

impl Default for LinkQueue {
    fn default() -> Self {
        LinkQueue {
            state: Mutex::new(Queued {
                sealed: VecDeque::new(),
                open: Batch::new(),
                messages: 0,
                accepting: true,
                closed: false,
            }),
            ready: Notify::new(),
        }
    }
}

impl LinkQueue {
    /// Queues one message: `write` appends its entry to the open batch
    /// (see [`crate::cluster::peer::wire::put_publish_entry`]); `size` is about how
    /// many bytes that is. Returns how many messages are queued now, and
    /// for [`Tracking::Batch`] the batch's ticket. On refusal a message's
    /// own ticket is handed back, to be failed.
    pub fn push(
        &self,
        size: usize,
        tracking: Tracking,
        write: impl FnOnce(&mut BytesMut),
    ) -> Result<Pushed, (Refused, Tracking)> {
        let (queued, ticket) = self.append(1, size, tracking, |open, tracking| {
            write(&mut open.body);
            match tracking {
                Tracking::Untracked => None,
                Tracking::Own(ticket) => {
                    open.tickets.push(ticket);
                    None
                }
                Tracking::Batch => Some(open.shared_ticket()),
            }
        })?;
        Ok(Pushed { queued, ticket })
    }

    /// Queues `messages` messages at once, `entries` being their batch
    /// entries back to back (see [`crate::router::gathered`]); all or
    /// none. Returns how many messages are queued now.
    pub fn push_entries(&self, entries: &[u8], messages: usize) -> Result<usize, Refused> {
        let appended = self.append(messages, entries.len(), (), |open, ()| {
            open.body.extend_from_slice(entries)
        });
        appended
            .map(|(queued, ())| queued)
            .map_err(|(refused, ())| refused)
    }

    /// Adds `messages` messages of about `size` bytes to the open batch,
    /// `fill` writing them (given `carried`, handed back on refusal). They
    /// join the open batch unless it would get more than a batch's worth,
    /// in which case it is sealed first and they start the next one.
    /// Returns how many messages are queued now, and what `fill` returned.
    fn append<T, R>(
        &self,
        messages: usize,
        size: usize,
        carried: T,
        fill: impl FnOnce(&mut Batch, T) -> R,
    ) -> Result<(usize, R), (Refused, T)> {
        let mut state = self.state.lock();
        if !state.accepting || state.closed {
            return Err((Refused::Down, carried));
        }
        if state.messages + messages > LINK_QUEUE {
            return Err((Refused::Full, carried));
        }
        let open = &state.open;
        if open.messages > 0
            && (open.messages + messages > BATCH || open.body.len() + size > BATCH_BYTES)
        {
            seal_open(&mut state);
        }
        let was_empty = state.messages == 0;
        let open = &mut state.open;
        let filled = fill(open, carried);
        open.messages += messages;
        if open.is_full() {
            seal_open(&mut state);
        }
        state.messages += messages;
        let queued = state.messages;
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok((queued, filled))
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.state.lock().messages
    }

    /// The oldest batch, full or not; waits while the queue is empty.
    /// `None` once the queue is closed.
    pub async fn next(&self) -> Option<Batch> {
        loop {
            {
                let mut state = self.state.lock();
                if let Some(batch) = take(&mut state) {
                    return Some(batch);
                }
                if state.closed {
                    return None;
                }
            }
            // A push between the check and here leaves a permit, so this
            // does not sleep through it.
            self.ready.notified().await;
        }
    }

    /// The link went down: refuse what comes until
    /// [`start_accepting`](Self::start_accepting), and hand back what is
    /// queued (lost with the link). Forwarding stale messages after a long
    /// partition would deliver them late and out of order with newer
    /// traffic.
    pub fn stop_accepting(&self) -> Vec<Batch> {
        let mut state = self.state.lock();
        state.accepting = false;
        let mut dropped = Vec::new();
        while let Some(batch) = take(&mut state) {
            dropped.push(batch);
        }
        dropped
    }

    /// The link is (re)connecting: queue again.
    pub fn start_accepting(&self) {
        self.state.lock().accepting = true;
    }

    /// The link is gone: [`next`](Self::next) ends, pushes are refused.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

/// Ends the open batch: it goes behind the sealed ones, a new one opens.
fn seal_open(state: &mut Queued) {
    let full = std::mem::replace(&mut state.open, Batch::new());
    state.sealed.push_back(full);
}

/// Takes the oldest batch out of the queue, the open one if no other.
fn take(state: &mut Queued) -> Option<Batch> {
    let batch = match state.sealed.pop_front() {
        Some(batch) => batch,
        None if state.open.messages > 0 => std::mem::replace(&mut state.open, Batch::new()),
        None => return None,
    };
    state.messages -= batch.messages;
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::peer::wire::put_batch_entry;
    use bytes::Bytes;
    use starling_proto::v1::ForwardedMessage;

    fn push(
        queue: &LinkQueue,
        wire: &ForwardedMessage,
        tracking: Tracking,
    ) -> Result<Pushed, (Refused, Tracking)> {
        queue.push(wire.encoded_len(), tracking, |body| {
            put_batch_entry(wire, body)
        })
    }

    fn wire(topic: &str, payload_len: usize) -> ForwardedMessage {
        ForwardedMessage {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from(vec![7u8; payload_len]),
            qos: 1,
            origin: Bytes::from_static(b"n1"),
            seq: 9,
            plain: true,
            ..ForwardedMessage::default()
        }
    }

    fn decode(batch: Batch, sequence: u64) -> ForwardBatch {
        let (bytes, _) = batch.finish(sequence);
        ForwardBatch::decode(bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_batch_decodes_as_the_forward_batch_of_its_messages() {
        let queue = LinkQueue::default();
        let sent = [wire("a/1", 3), wire("b", 0), wire("c/d/e", 100)];
        for message in &sent {
            assert!(push(&queue, message, Tracking::Untracked).is_ok());
        }
        assert_eq!(queue.len(), 3);
        let batch = queue.next().await;
        assert_eq!(queue.len(), 0);
        let decoded = batch.map(|b| decode(b, 42)).unwrap_or_default();
        assert_eq!(decoded.sequence, 42);
        assert_eq!(decoded.messages, sent);
    }

    #[tokio::test]
    async fn batches_are_cut_by_count_and_by_bytes() {
        let queue = LinkQueue::default();
        for _ in 0..BATCH + 1 {
            assert!(push(&queue, &wire("t", 1), Tracking::Untracked).is_ok());
        }
        let first = queue.next().await.map(|b| b.messages);
        let second = queue.next().await.map(|b| b.messages);
        assert_eq!((first, second), (Some(BATCH), Some(1)));

        // A message that does not fit the open batch starts the next one;
        // one larger than a batch goes alone.
        let big = wire("big", BATCH_BYTES);
        assert!(push(&queue, &wire("small", 1), Tracking::Untracked).is_ok());
        assert!(push(&queue, &big, Tracking::Untracked).is_ok());
        assert!(push(&queue, &wire("small", 1), Tracking::Untracked).is_ok());
        let counts: Vec<usize> = [queue.next().await, queue.next().await, queue.next().await]
            .into_iter()
            .flatten()
            .map(|b| b.messages)
            .collect();
        assert_eq!(counts, vec![1, 1, 1]);
    }

    /// Entries gathered elsewhere join the open batch whole: after what is
    /// queued, in their order, never splitting a batch's worth.
    #[tokio::test]
    async fn gathered_entries_are_queued_whole_and_in_order() {
        let queue = LinkQueue::default();
        let gathered = |topics: &[&str]| {
            let mut entries = BytesMut::new();
            for topic in topics {
                put_batch_entry(&wire(topic, 2), &mut entries);
            }
            entries
        };
        assert!(push(&queue, &wire("first", 1), Tracking::Untracked).is_ok());
        assert_eq!(queue.push_entries(&gathered(&["a", "b"]), 2), Ok(3));
        assert!(push(&queue, &wire("last", 1), Tracking::Untracked).is_ok());
        let topics = |batch: Option<Batch>| -> Vec<Bytes> {
            let decoded = batch.map(|b| decode(b, 1)).unwrap_or_default();
            decoded.messages.into_iter().map(|m| m.topic).collect()
        };
        assert_eq!(topics(queue.next().await), ["first", "a", "b", "last"]);

        // Entries that would take the open batch past a batch's worth
        // start the next one.
        for _ in 0..BATCH - 1 {
            assert!(push(&queue, &wire("t", 1), Tracking::Untracked).is_ok());
        }
        assert_eq!(queue.push_entries(&gathered(&["x", "y"]), 2), Ok(BATCH + 1));
        let first = queue.next().await.map(|b| b.messages);
        assert_eq!(first, Some(BATCH - 1));
        assert_eq!(topics(queue.next().await), ["x", "y"]);
    }

    #[test]
    fn gathered_entries_are_refused_whole() {
        let queue = LinkQueue::default();
        let mut entries = BytesMut::new();
        put_batch_entry(&wire("a", 1), &mut entries);
        put_batch_entry(&wire("b", 1), &mut entries);
        for _ in 0..LINK_QUEUE - 1 {
            assert!(push(&queue, &wire("t", 1), Tracking::Untracked).is_ok());
        }
        assert_eq!(queue.push_entries(&entries, 2), Err(Refused::Full));
        assert_eq!(queue.len(), LINK_QUEUE - 1);
        let _ = queue.stop_accepting();
        assert_eq!(queue.push_entries(&entries[..0], 0), Err(Refused::Down));
    }

    /// Messages for this node only share their batch's ticket: one per
    /// batch, completed with it. A message's own ticket stays its own.
    #[tokio::test]
    async fn messages_of_a_batch_share_its_ticket() {
        let queue = LinkQueue::default();
        let batch_ticket = |pushed: Result<Pushed, (Refused, Tracking)>| match pushed {
            Ok(Pushed {
                ticket: Some(ticket),
                ..
            }) => ticket,
            other => panic!("expected the batch's ticket, got {other:?}"),
        };
        let first = batch_ticket(push(&queue, &wire("t", 0), Tracking::Batch));
        let own = ForwardTicket::new(2);
        assert!(push(&queue, &wire("t", 0), Tracking::Own(own.clone())).is_ok());
        for _ in 2..BATCH {
            let same = batch_ticket(push(&queue, &wire("t", 0), Tracking::Batch));
            assert!(Arc::ptr_eq(&same, &first));
        }
        // The batch is full: the next message starts another, and its ticket.
        let second = batch_ticket(push(&queue, &wire("t", 0), Tracking::Batch));
        assert!(!Arc::ptr_eq(&second, &first));

        let Some(batch) = queue.next().await else {
            panic!("a batch is queued");
        };
        let (_, tickets) = batch.finish(1);
        assert_eq!(tickets.len(), 2, "the shared ticket and the own one");
        assert!(tickets.iter().any(|t| Arc::ptr_eq(t, &first)));
        assert!(tickets.iter().any(|t| Arc::ptr_eq(t, &own)));
        for ticket in tickets {
            ticket.complete(true);
        }
        assert!(first.is_done() && first.delivered());
        assert!(!second.is_done(), "the next batch is not acknowledged yet");
    }

    #[test]
    fn a_full_or_stopped_queue_refuses_and_hands_the_ticket_back() {
        let queue = LinkQueue::default();
        for _ in 0..LINK_QUEUE {
            assert!(push(&queue, &wire("t", 0), Tracking::Untracked).is_ok());
        }
        let ticket = ForwardTicket::new(1);
        match push(&queue, &wire("t", 0), Tracking::Own(ticket.clone())) {
            Err((Refused::Full, Tracking::Own(back))) => assert!(Arc::ptr_eq(&back, &ticket)),
            other => panic!("expected a refusal with the ticket, got {other:?}"),
        }
        let dropped: usize = queue.stop_accepting().iter().map(|b| b.messages).sum();
        assert_eq!(dropped, LINK_QUEUE);
        assert_eq!(queue.len(), 0);
        assert!(matches!(
            push(&queue, &wire("t", 0), Tracking::Batch),
            Err((Refused::Down, Tracking::Batch))
        ));
        queue.start_accepting();
        assert!(matches!(
            push(&queue, &wire("t", 0), Tracking::Untracked),
            Ok(Pushed {
                queued: 1,
                ticket: None
            })
        ));
    }

    #[tokio::test]
    async fn next_wakes_for_a_push_and_ends_when_closed() {
        let queue = Arc::new(LinkQueue::default());
        let taker = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let first = queue.next().await.map(|b| b.messages);
                let after_close = queue.next().await.is_none();
                (first, after_close)
            })
        };
        tokio::task::yield_now().await;
        assert!(push(&queue, &wire("t", 0), Tracking::Untracked).is_ok());
        tokio::task::yield_now().await;
        queue.close();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), taker).await;
        assert!(matches!(outcome, Ok(Ok((Some(1), true)))));
        assert!(queue.is_closed());
    }
}
