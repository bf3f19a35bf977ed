//! The receiving end of `Peer.Forward`: batches of messages from another
//! node, delivered here and acknowledged batch by batch.
//!
//! The generated server would decode each batch with prost into a
//! `ForwardBatchEntries` — a `Vec` of one `Bytes` per message, cut from
//! the frame and grown as it fills — only for the entries to be decoded
//! again. Here the method has a codec of its own that hands the batch over
//! as it came, and the entries are read in place: each message's topic and
//! payload are slices of the frame. [`PeerRoutes`] gives the method this
//! codec and every other method the generated server.

use std::convert::Infallible;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use starling_proto::v1::ForwardAck;
use starling_proto::v1::peer_server::PeerServer;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstEncoder;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::cluster::peer::MAX_PEER_MESSAGE;
use crate::cluster::peer::wire::{Incoming, Origins, Target, decode_entry, read_varint};
use crate::cluster::service::PeerService;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::router::Scope;

const FORWARD_PATH: &str = "/starling.cluster.v1.Peer/Forward";

/// Decoded messages a stream keeps room for between batches: a full batch
/// of the usual sender (a peer may send more, once in a while).
const DECODED_KEPT: usize = 256;

/// The peer service: `Forward` served here, the rest by the generated
/// server.
#[derive(Clone)]
pub struct PeerRoutes {
    broker: Arc<Broker>,
    generated: PeerServer<PeerService>,
}

impl PeerRoutes {
    pub fn new(broker: Arc<Broker>, generated: PeerServer<PeerService>) -> PeerRoutes {
        PeerRoutes { broker, generated }
    }
}

impl NamedService for PeerRoutes {
    const NAME: &'static str = <PeerServer<PeerService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for PeerRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != FORWARD_PATH {
            return self.generated.call(request);
        }
        let method = ForwardMethod(self.broker.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(UndecodedBatches)
                .apply_max_message_size_config(Some(MAX_PEER_MESSAGE), Some(MAX_PEER_MESSAGE));
            Ok(grpc.streaming(method, request).await)
        })
    }
}

/// Decodes nothing: a batch comes as the bytes of its `ForwardBatch`.
/// Encodes the acks with prost.
struct UndecodedBatches;

impl Codec for UndecodedBatches {
    type Encode = ForwardAck;
    type Decode = Bytes;
    type Encoder = ProstEncoder<ForwardAck>;
    type Decoder = UndecodedBatches;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        UndecodedBatches
    }
}

impl Decoder for UndecodedBatches {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, batch: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(batch.copy_to_bytes(batch.remaining())))
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ForwardAck, Status>> + Send>>;

struct ForwardMethod(Arc<Broker>);

impl Service<Request<Streaming<Bytes>>> for ForwardMethod {
    type Response = Response<AckStream>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(receive(
            self.0.clone(),
            request.into_inner(),
        ))))
    }
}

/// Delivers the batches of one stream as they come, acknowledging each
/// once its messages are in their subscribers' queues.
fn receive(broker: Arc<Broker>, mut inbound: Streaming<Bytes>) -> AckStream {
    let mut origins = Origins::new(Arc::from(broker.config.cluster.node_id.as_str()));
    let mut decoded = Vec::new();
    let (acks, outgoing) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let body = match inbound.message().await {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "forward stream from a peer ended");
                    return;
                }
            };
            let Some(batch) = Batch::parse(body) else {
                // As the generated server would have refused it.
                warn!("a peer sent a batch that is not a ForwardBatch; closing its stream");
                let _ = acks
                    .send(Err(Status::invalid_argument("batch does not decode")))
                    .await;
                return;
            };
            // Counted once per batch: a shared counter bumped per message
            // bounces its cache line between the cores.
            let received = deliver_batch(&broker, &batch, &mut origins, &mut decoded);
            Metrics::add(&broker.metrics.forward_received, received);
            let ack = ForwardAck {
                sequence: batch.sequence,
            };
            if acks.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(outgoing))
}

/// Delivers the messages of one batch here; returns how many were valid.
/// Synchronous, so that the tries' read locks it keeps from one message
/// to the next cannot be held across an `.await`.
///
/// Decodes the whole batch into `decoded` (empty, reused from batch to
/// batch) before delivering any of it, so the tries are locked for the
/// routing only and each loop does one kind of work: node 2 of a cluster
/// fan-in spent about 10 % less CPU per message than decoding and routing
/// each message in turn (6 alternating pairs, lower in 5). Why was not
/// pinned down: the reference counts each message takes on the batch's
/// buffer, which the subscribers' writers give back as they send, cost
/// as much in the profile as before.
fn deliver_batch(
    broker: &Arc<Broker>,
    batch: &Batch,
    origins: &mut Origins,
    decoded: &mut Vec<Incoming>,
) -> u64 {
    for entry in batch.entries() {
        match decode_entry(&batch.body, entry, origins) {
            Some(incoming) => decoded.push(incoming),
            None => debug!("invalid message from a peer dropped"),
        }
    }
    let received = decoded.len() as u64;
    let mut local = broker.router.gathering_run();
    let mut rest = &mut decoded[..];
    while let Some((first, _)) = rest.split_first_mut() {
        if let Some(target) = first.target.take() {
            // Behind what this batch already has for that session.
            local.queue_gathered();
            deliver_redirected(broker, first.message.clone(), target);
            rest = &mut rest[1..];
            continue;
        }
        // A run of messages that route alike is matched once: a peer's
        // batch holds each of its publishers' messages mostly in a row.
        let run = 1 + rest[1..]
            .iter()
            .take_while(|next| routes_alike(&rest[0], next))
            .count();
        let (same, after) = rest.split_at_mut(run);
        let scope = Scope::Selected {
            plain: same[0].plain,
            groups: &same[0].groups,
        };
        local.route_same_topic(
            &same[0].message.topic,
            same.iter().map(|i| &i.message),
            scope,
        );
        rest = after;
    }
    drop(local);
    decoded.clear();
    if decoded.capacity() > DECODED_KEPT {
        *decoded = Vec::new();
    }
    received
}

/// Whether `next` goes where `first` (a message for subscriptions, not a
/// redirect) goes: the same topic, for the same subscriptions.
fn routes_alike(first: &Incoming, next: &Incoming) -> bool {
    next.target.is_none()
        && next.plain == first.plain
        && next.message.topic == first.message.topic
        && next.groups == first.groups
}

/// Delivers a message redirected to one session that moved here. The
/// redirect can overtake the takeover's answer that installs the session,
/// so a session not found yet is looked for again for a moment.
fn deliver_redirected(broker: &Arc<Broker>, message: Arc<Message>, target: Target) {
    let delivery = Delivery {
        message,
        qos: target.qos,
        retain: target.retain,
        subscription_ids: target.subscription_ids.into_iter().collect(),
        share: None,
        suback_hold: 0,
    };
    if let Some(mailbox) = broker.sessions.mailbox_of(&target.client_id) {
        broker.router.push(&mailbox, delivery);
        return;
    }
    let broker = broker.clone();
    tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(mailbox) = broker.sessions.mailbox_of(&target.client_id) {
                broker.router.push(&mailbox, delivery);
                return;
            }
        }
        Metrics::inc(&broker.metrics.forward_dropped);
        warn!(client_id = %target.client_id, "redirected message for an unknown session dropped");
    });
}

/// A `ForwardBatch` as it came: field 1 its sequence number, field 2 (any
/// number of times) one encoded `ForwardedMessage` each. Fields may come
/// in any order (the sender appends the sequence last) and unknown fields
/// are skipped, as prost would.
struct Batch {
    body: Bytes,
    sequence: u64,
}

impl Batch {
    /// `None` when `body` is not a valid encoding (what prost refuses).
    fn parse(body: Bytes) -> Option<Batch> {
        let mut sequence = 0;
        let mut fields = Fields { body: &body, at: 0 };
        while let Some(field) = fields.next_field()? {
            if let (1, Value::Varint(value)) = field {
                sequence = value;
            }
        }
        Some(Batch { body, sequence })
    }

    /// Where each message's encoding is in `body`, in order.
    fn entries(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut fields = Fields {
            body: &self.body,
            at: 0,
        };
        // `parse` read every field already, so none fails here.
        std::iter::from_fn(move || fields.next_field().flatten()).filter_map(|field| match field {
            (2, Value::Delimited(range)) => Some(range),
            _ => None,
        })
    }
}

enum Value {
    Varint(u64),
    Delimited(Range<usize>),
    Other,
}

/// Nesting of groups prost accepts (its recursion limit).
const MAX_GROUP_DEPTH: usize = 100;

/// Reads protobuf fields one by one.
struct Fields<'a> {
    body: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    /// `Some(None)` at the end; `None` when the bytes do not parse.
    fn next_field(&mut self) -> Option<Option<(u64, Value)>> {
        if self.at == self.body.len() {
            return Some(None);
        }
        let (number, wire_type) = self.key()?;
        let value = self.value(number, wire_type, 0)?;
        // The two fields of a batch must have their own wire types.
        match (number, &value) {
            (1, Value::Varint(_)) | (2, Value::Delimited(_)) => {}
            (1 | 2, _) => return None,
            _ => {}
        }
        Some(Some((number, value)))
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Option<(u64, u64)> {
        let key = self.varint()?;
        let number = key >> 3;
        if key > u64::from(u32::MAX) || number == 0 {
            return None;
        }
        Some((number, key & 7))
    }

    /// Reads the value of field `number`; a group (deprecated, never sent
    /// here, but valid protobuf) is skipped up to its end.
    fn value(&mut self, number: u64, wire_type: u64, depth: usize) -> Option<Value> {
        Some(match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Value::Delimited(self.take(len)?)
            }
            3 if depth < MAX_GROUP_DEPTH => loop {
                match self.key()? {
                    (end, 4) => break (end == number).then_some(Value::Other)?,
                    (inner, wire_type) => self.value(inner, wire_type, depth + 1)?,
                };
            },
            5 => self.skip(4)?,
            _ => return None,
        })
    }

    fn skip(&mut self, len: usize) -> Option<Value> {
        self.take(len).map(|_| Value::Other)
    }

    /// The next `len` bytes; `None` past the end.
    fn take(&mut self, len: usize) -> Option<Range<usize>> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.body.len())?;
        let range = self.at..end;
        self.at = end;
        Some(range)
    }

    fn varint(&mut self) -> Option<u64> {
        read_varint(self.body, &mut self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use starling_proto::v1::ForwardBatchEntries;

    fn entries_of(batch: &Batch) -> Vec<Bytes> {
        batch.entries().map(|r| batch.body.slice(r)).collect()
    }

    #[test]
    fn a_batch_reads_as_prost_reads_it() {
        let sent = ForwardBatchEntries {
            sequence: 300,
            messages: vec![
                Bytes::from_static(b"first"),
                Bytes::new(),
                Bytes::from(vec![7u8; 200]),
            ],
        };
        // The sender writes the messages, then appends the sequence.
        let mut body = ForwardBatchEntries {
            sequence: 0,
            messages: sent.messages.clone(),
        }
        .encode_to_vec();
        ForwardBatchEntries {
            sequence: 300,
            messages: Vec::new(),
        }
        .encode(&mut body)
        .unwrap_or_else(|e| panic!("{e}"));
        let Some(batch) = Batch::parse(Bytes::from(body)) else {
            panic!("a valid batch parses");
        };
        assert_eq!(batch.sequence, 300);
        assert_eq!(entries_of(&batch), sent.messages);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // field 3 varint, field 4 fixed64, field 5 fixed32, field 6 bytes,
        // then one message and the sequence.
        let body = [
            0x18, 0x01, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2d, 1, 2, 3, 4, 0x32, 0x01, 0xff, 0x12,
            0x02, b'h', b'i', 0x08, 0x05,
        ];
        let Some(batch) = Batch::parse(Bytes::copy_from_slice(&body)) else {
            panic!("unknown fields are allowed");
        };
        assert_eq!(batch.sequence, 5);
        assert_eq!(entries_of(&batch), [Bytes::from_static(b"hi")]);
    }

    #[test]
    fn what_prost_refuses_is_refused() {
        for body in [
            &[0x12, 0x05, b'a'][..], // message longer than the batch
            &[0x08],                 // varint cut short
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ], // 65 bits
            &[0x00, 0x01],           // field number 0
            &[0x1b, 0x24],           // a group ended by another field
            &[0x0a, 0x00],           // the sequence as bytes
            &[0x10, 0x01],           // a message as a varint
        ] {
            assert!(
                Batch::parse(Bytes::copy_from_slice(body)).is_none(),
                "{body:?}"
            );
            assert!(ForwardBatchEntries::decode(body).is_err(), "{body:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_as_prost_decodes_them(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)) {
            let ours = Batch::parse(Bytes::from(bytes.clone()));
            match ForwardBatchEntries::decode(&bytes[..]) {
                Ok(theirs) => {
                    let Some(ours) = ours else {
                        panic!("prost decodes {bytes:?}, Batch::parse does not");
                    };
                    proptest::prop_assert_eq!(ours.sequence, theirs.sequence);
                    proptest::prop_assert_eq!(entries_of(&ours), theirs.messages);
                }
                Err(_) => proptest::prop_assert!(ours.is_none(), "prost refuses {:?}", bytes),
            }
        }
    }

    /// A batch's messages reach each subscriber in the order they came,
    /// whether they routed in a run of one topic or on their own.
    #[test]
    fn a_batch_delivers_in_order_across_runs_of_one_topic() {
        use crate::config::DropPolicy;
        use crate::message::SessionId;
        use crate::router::trie::Subscriber;
        use crate::session::mailbox::Mailbox;
        use starling_codec::topic::parse_filter;
        use starling_codec::{MessageProperties, QoS, SubscriptionOptions};

        let broker = Broker::new(crate::Config::default());
        let subscribe = |id: u64, filter: &str| {
            let mailbox = Arc::new(Mailbox::new(SessionId(id), 100, DropPolicy::Oldest, true));
            let Ok(parsed) = parse_filter(filter) else {
                panic!("{filter} is a valid filter");
            };
            let subscriber = Subscriber {
                mailbox: mailbox.clone(),
                options: SubscriptionOptions::default(),
                identifier: None,
            };
            broker.router.subscribe(&parsed, SessionId(id), subscriber);
            mailbox.set_online(true);
            mailbox
        };
        let only_a = subscribe(1, "a");
        let all = subscribe(2, "#");

        // (topic, for plain subscriptions): the third "a" is for a share
        // group only, so it ends the run of "a" and reaches nobody here.
        let sent = [
            ("a", true),
            ("a", true),
            ("a", false),
            ("a", true),
            ("b", true),
            ("a", true),
        ];
        let mut body = bytes::BytesMut::new();
        let own_node = Bytes::from_static(b"n1");
        for (i, (topic, plain)) in sent.iter().enumerate() {
            let message = Message::new(
                (*topic).into(),
                Bytes::from(i.to_string()),
                QoS::AtMostOnce,
                false,
                MessageProperties::default(),
                None,
            );
            crate::cluster::peer::wire::put_publish_entry(
                &message,
                *plain,
                &[],
                &own_node,
                &mut body,
            );
        }
        let Some(batch) = Batch::parse(body.freeze()) else {
            panic!("a valid batch parses");
        };
        let mut origins = Origins::new(Arc::from("n2"));
        let received = deliver_batch(&broker, &batch, &mut origins, &mut Vec::new());

        assert_eq!(received, 6);
        let payloads = |mailbox: &Mailbox| -> Vec<String> {
            mailbox
                .take_all()
                .into_iter()
                .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
                .collect()
        };
        assert_eq!(payloads(&only_a), ["0", "1", "3", "5"]);
        assert_eq!(payloads(&all), ["0", "1", "3", "4", "5"]);
    }
}
