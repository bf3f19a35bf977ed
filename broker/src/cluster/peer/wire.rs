//! Messages on the wire between nodes (`ForwardedMessage`) and back.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use starling_codec::{ByteString, PublishProperties, QoS};
use starling_proto::v1::{ForwardedMessage, UserProperty};

use crate::message::{Delivery, Message, MessageProperties, Origin, ShareKey};

/// A message for another node; `own_node` names this one as its origin
/// when it was published here. [`put_publish_entry`] writes the usual
/// publish without this struct: a field added here must be added there
/// too (or make a message unusual there).
pub fn to_wire(message: &Message, own_node: &Bytes) -> ForwardedMessage {
    let p = &message.properties;
    ForwardedMessage {
        origin: match &message.origin {
            Some(origin) => Bytes::copy_from_slice(origin.as_bytes()),
            None => own_node.clone(),
        },
        seq: message.seq,
        target_client: String::new(),
        target_qos: 0,
        target_retain: false,
        target_subscription_ids: Vec::new(),
        topic: message.topic.as_bytes().clone(),
        payload: message.payload.clone(),
        qos: u32::from(message.qos.as_u8()),
        retain: message.retain,
        payload_format_indicator: p.payload_format_indicator.map(u32::from),
        message_expiry_interval: expiry_left(message),
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| UserProperty {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        shared_groups: Vec::new(),
        plain: true,
    }
}

/// A publish for another node's plain subscriptions (`plain`) and the share
/// groups it was chosen for.
pub fn publish_to_wire(
    message: &Message,
    plain: bool,
    groups: &[Arc<ShareKey>],
    own_node: &Bytes,
) -> ForwardedMessage {
    let mut wire = to_wire(message, own_node);
    wire.plain = plain;
    wire.shared_groups = groups
        .iter()
        .map(|k| format!("{}/{}", k.group, k.filter))
        .collect();
    wire
}

/// A delivery redirected to one session that moved to `node`.
pub fn redirect_to_wire(
    client_id: &str,
    delivery: &Delivery,
    own_node: &Bytes,
) -> ForwardedMessage {
    let mut wire = to_wire(&delivery.message, own_node);
    wire.target_client = client_id.to_string();
    wire.target_qos = u32::from(delivery.qos.as_u8());
    wire.target_retain = delivery.retain;
    wire.target_subscription_ids = delivery.subscription_ids.to_vec();
    wire
}

/// Seconds of expiry the message has left, if it expires. The clock is
/// read only for the few messages that do.
fn expiry_left(message: &Message) -> Option<u32> {
    message
        .expires_at
        .and_then(|_| message.remaining_expiry(Instant::now()))
}

/// The key of one entry of `ForwardBatch.messages` (field 2, length
/// delimited): a batch's messages are a run of such entries.
const BATCH_ENTRY_KEY: u8 = (2 << 3) | 2;

/// Appends `wire` as one entry of a `ForwardBatch`'s `messages`.
pub fn put_batch_entry(wire: &ForwardedMessage, buf: &mut BytesMut) {
    buf.put_u8(BATCH_ENTRY_KEY);
    // Encoding into a BytesMut cannot run out of room.
    let _ = wire.encode_length_delimited(buf);
}

/// Appends what [`publish_to_wire`] makes, as one entry of a
/// `ForwardBatch`'s `messages`.
///
/// The usual publish (no share groups, none of the properties that are
/// strings or lists) is written field by field from the message itself,
/// the bytes prost would write: building the `ForwardedMessage` first
/// took a reference on the payload and topic and let prost write each
/// byte of a key or varint as a copy of its own, which together cost more
/// than routing the publish. The tests hold the two encodings equal.
pub fn put_publish_entry(
    message: &Message,
    plain: bool,
    groups: &[Arc<ShareKey>],
    own_node: &Bytes,
    buf: &mut BytesMut,
) {
    let p = &message.properties;
    let usual = groups.is_empty()
        && p.content_type.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty();
    if !usual {
        put_batch_entry(&publish_to_wire(message, plain, groups, own_node), buf);
        return;
    }
    let topic: &[u8] = message.topic.as_bytes();
    let payload: &[u8] = &message.payload;
    let origin: &[u8] = match &message.origin {
        Some(origin) => origin.as_bytes(),
        None => own_node,
    };
    let qos = u64::from(message.qos.as_u8());
    let format = p.payload_format_indicator.map(u64::from);
    let expiry = expiry_left(message).map(u64::from);
    // Proto3 leaves out fields at their default; `optional` ones are
    // written whenever set. Every key here is one byte (fields 1 to 15).
    let bytes_len = |b: &[u8]| {
        if b.is_empty() {
            0
        } else {
            1 + varint_len(b.len() as u64) + b.len()
        }
    };
    let varint_field_len = |v: u64| if v == 0 { 0 } else { 1 + varint_len(v) };
    let len = bytes_len(topic)
        + bytes_len(payload)
        + varint_field_len(qos)
        + if message.retain { 2 } else { 0 }
        + format.map_or(0, |v| 1 + varint_len(v))
        + expiry.map_or(0, |v| 1 + varint_len(v))
        + if plain { 2 } else { 0 }
        + bytes_len(origin)
        + varint_field_len(message.seq);
    buf.reserve(1 + varint_len(len as u64) + len);
    let mut head = Scratch::default();
    head.byte(BATCH_ENTRY_KEY);
    head.varint(len as u64);
    head.bytes_field(1, topic, buf);
    head.bytes_field(2, payload, buf);
    if qos != 0 {
        head.varint_field(3, qos);
    }
    if message.retain {
        head.varint_field(4, 1);
    }
    if let Some(format) = format {
        head.varint_field(5, format);
    }
    if let Some(expiry) = expiry {
        head.varint_field(6, expiry);
    }
    if plain {
        head.varint_field(12, 1);
    }
    head.bytes_field(13, origin, buf);
    if message.seq != 0 {
        head.varint_field(14, message.seq);
    }
    head.flush(buf);
}

/// Appends what [`redirect_to_wire`] makes, as one entry of a
/// `ForwardBatch`'s `messages`.
pub fn put_redirect_entry(
    client_id: &str,
    delivery: &Delivery,
    own_node: &Bytes,
    buf: &mut BytesMut,
) {
    put_batch_entry(&redirect_to_wire(client_id, delivery, own_node), buf);
}

fn varint_len(value: u64) -> usize {
    // 7 bits per byte; 0 takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Keys, lengths and small values gathered on the stack and appended in
/// one piece before each field of bytes, instead of a copy per byte.
struct Scratch {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl Scratch {
    fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    /// A varint field (wire type 0) numbered 1 to 15.
    fn varint_field(&mut self, field: u8, value: u64) {
        self.byte(field << 3);
        self.varint(value);
    }

    /// A length-delimited field numbered 1 to 15, left out when empty:
    /// its key and length go here, then the whole is appended to `buf`
    /// with the bytes after it.
    fn bytes_field(&mut self, field: u8, value: &[u8], buf: &mut BytesMut) {
        if value.is_empty() {
            return;
        }
        self.byte((field << 3) | 2);
        self.varint(value.len() as u64);
        self.flush(buf);
        buf.put_slice(value);
    }

    fn flush(&mut self, buf: &mut BytesMut) {
        buf.put_slice(&self.bytes[..self.len]);
        self.len = 0;
    }
}

/// What a redirected message says about its one target session.
pub struct Target {
    pub client_id: String,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// A message received from a peer.
pub struct Incoming {
    pub message: Arc<Message>,
    /// Set for a delivery redirected to one session.
    pub target: Option<Target>,
    /// Deliver to plain subscriptions.
    pub plain: bool,
    /// Deliver to these share groups (one member each).
    pub groups: Vec<Arc<ShareKey>>,
}

/// Origin node names as they come off the wire. Messages of a batch mostly
/// share one origin, so the last name is kept and reused rather than
/// allocated again for every message.
pub struct Origins {
    own_node: Arc<str>,
    last: Option<Origin>,
}

impl Origins {
    /// `own_node` is this node's name: a message that names it (or none)
    /// was published here.
    pub fn new(own_node: Arc<str>) -> Origins {
        Origins {
            own_node,
            last: None,
        }
    }

    /// The origin a message names, `Ok(None)` for this node; `Err` when
    /// the name is not UTF-8.
    fn resolve(&mut self, wire: &[u8]) -> Result<Option<Origin>, std::str::Utf8Error> {
        if let Some(last) = self.last
            && last.as_bytes() == wire
        {
            return Ok(Some(last));
        }
        if wire.is_empty() || wire == self.own_node.as_bytes() {
            return Ok(None);
        }
        let name = Origin::intern(std::str::from_utf8(wire)?);
        self.last = Some(name);
        Ok(Some(name))
    }
}

/// The message a peer sent (and its target session, if redirected), or
/// `None` when it is not a valid message. A message that names this node
/// as its origin comes back as "published here", so both copies of a
/// message compare equal.
pub fn from_wire(wire: ForwardedMessage, origins: &mut Origins) -> Option<Incoming> {
    let target = if wire.target_client.is_empty() {
        None
    } else {
        Some(Target {
            client_id: wire.target_client,
            qos: QoS::from_u8(u8::try_from(wire.target_qos).ok()?)?,
            retain: wire.target_retain,
            subscription_ids: wire.target_subscription_ids,
        })
    };
    let plain = wire.plain;
    let groups = wire
        .shared_groups
        .iter()
        .filter_map(|g| {
            let (group, filter) = g.split_once('/')?;
            Some(Arc::new(ShareKey {
                group: group.into(),
                filter: filter.into(),
            }))
        })
        .collect();
    let properties = PublishProperties {
        payload_format_indicator: wire
            .payload_format_indicator
            .and_then(|v| u8::try_from(v).ok()),
        message_expiry_interval: wire.message_expiry_interval,
        content_type: wire.content_type.map(ByteString::from),
        response_topic: wire.response_topic.map(ByteString::from),
        correlation_data: wire.correlation_data,
        user_properties: wire
            .user_properties
            .into_iter()
            .map(|p| (ByteString::from(p.key), ByteString::from(p.value)))
            .collect(),
        ..PublishProperties::default()
    };
    let message = received(Received {
        topic: wire.topic,
        payload: wire.payload,
        qos: wire.qos,
        retain: wire.retain,
        properties: properties.into(),
        origin: origins.resolve(&wire.origin).ok()?,
        seq: wire.seq,
    })?;
    Some(Incoming {
        message,
        target,
        plain,
        groups,
    })
}

/// What either decoding read of a message, before its checks (the origin
/// is checked as it is resolved: [`Origins::resolve`]).
struct Received {
    topic: Bytes,
    payload: Bytes,
    qos: u32,
    retain: bool,
    properties: MessageProperties,
    origin: Option<Origin>,
    seq: u64,
}

/// The message a peer sent, or `None` when its QoS or topic is not valid:
/// the one place both decodings check them. Built straight into its `Arc`:
/// moving the message through return values on its way there cost node 2
/// several copies of it per message.
fn received(parts: Received) -> Option<Arc<Message>> {
    let qos = QoS::from_u8(u8::try_from(parts.qos).ok()?)?;
    let topic = ByteString::try_from(parts.topic).ok()?;
    Some(Arc::new(Message::numbered(
        topic,
        parts.payload,
        qos,
        parts.retain,
        parts.properties,
        None,
        parts.origin,
        parts.seq,
    )))
}

/// Decodes one entry of a `ForwardBatch` (a `ForwardedMessage`'s
/// encoding, at `entry` in `batch`) into the message it carries, as
/// [`from_wire`] would.
///
/// The usual publish (the fields [`put_publish_entry`] writes directly) is
/// read field by field into the message, its topic and payload sliced out
/// of the batch; anything else (another field, another wire type, bytes
/// that do not parse) is left to prost. Building the whole
/// `ForwardedMessage` first cost the receiving node more than delivering
/// the message.
pub fn decode_entry(
    batch: &Bytes,
    entry: std::ops::Range<usize>,
    origins: &mut Origins,
) -> Option<Incoming> {
    let bytes = batch.get(entry.clone())?;
    match decode_usual(bytes) {
        Some(usual) => {
            // Most messages have neither: no 160-byte struct to fill and
            // check for them.
            let properties = match (usual.format, usual.expiry) {
                (None, None) => MessageProperties::default(),
                (format, expiry) => PublishProperties {
                    payload_format_indicator: format.and_then(|v| u8::try_from(v).ok()),
                    message_expiry_interval: expiry,
                    ..PublishProperties::default()
                }
                .into(),
            };
            let origin = origins.resolve(&bytes[usual.origin]).ok()?;
            let within = |range: std::ops::Range<usize>| {
                batch.slice(entry.start + range.start..entry.start + range.end)
            };
            let message = received(Received {
                topic: within(usual.topic),
                payload: within(usual.payload),
                qos: usual.qos,
                retain: usual.retain,
                properties,
                origin,
                seq: usual.seq,
            })?;
            Some(Incoming {
                message,
                target: None,
                plain: usual.plain,
                groups: Vec::new(),
            })
        }
        None => from_wire(ForwardedMessage::decode(batch.slice(entry)).ok()?, origins),
    }
}

/// Where the fields of a usual publish are in its entry, and its values.
/// Fields left out keep proto3's defaults; a field given twice keeps the
/// last, as prost does.
#[derive(Default)]
struct Usual {
    topic: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    origin: std::ops::Range<usize>,
    qos: u32,
    retain: bool,
    format: Option<u32>,
    expiry: Option<u32>,
    plain: bool,
    seq: u64,
}

/// `None` when the entry is not a usual publish that parses.
fn decode_usual(entry: &[u8]) -> Option<Usual> {
    let mut usual = Usual::default();
    let mut at = 0;
    while at < entry.len() {
        let key = read_varint(entry, &mut at)?;
        match (key >> 3, key & 7) {
            (field @ (1 | 2 | 13), 2) => {
                let len = usize::try_from(read_varint(entry, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|end| *end <= entry.len())?;
                let range = at..end;
                at = end;
                match field {
                    1 => usual.topic = range,
                    2 => usual.payload = range,
                    _ => usual.origin = range,
                }
            }
            (field @ (3 | 4 | 5 | 6 | 12 | 14), 0) => {
                let value = read_varint(entry, &mut at)?;
                // uint32 fields keep the low 32 bits, as prost does.
                match field {
                    3 => usual.qos = value as u32,
                    4 => usual.retain = value != 0,
                    5 => usual.format = Some(value as u32),
                    6 => usual.expiry = Some(value as u32),
                    12 => usual.plain = value != 0,
                    _ => usual.seq = value,
                }
            }
            _ => return None,
        }
    }
    Some(usual)
}

/// A protobuf varint at `at` in `bytes`, read as prost reads it; `at`
/// moves past it.
pub(crate) fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            // Bits beyond 64: prost refuses it too.
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    // More than ten bytes: not a varint.
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn round_trip_keeps_what_subscribers_see() {
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/me".into()),
            correlation_data: Some(Bytes::from_static(b"id-7")),
            user_properties: vec![("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        let original = Message::new(
            "a/b".into(),
            Bytes::from_static(b"hi"),
            QoS::ExactlyOnce,
            true,
            properties,
            None,
        );
        let mut origins = Origins::new(Arc::from("n2"));
        let keys = [Arc::new(ShareKey {
            group: "g".into(),
            filter: "a/+".into(),
        })];
        let n1 = Bytes::from_static(b"n1");
        let wire = publish_to_wire(&original, false, &keys, &n1);
        let incoming = from_wire(wire, &mut origins).unwrap();
        assert!(incoming.target.is_none());
        assert!(!incoming.plain);
        assert_eq!(incoming.groups, keys);
        let back = incoming.message;
        assert_eq!(back.origin.as_deref(), Some("n1"));
        assert_eq!(back.seq, original.seq);
        let n2 = Bytes::from_static(b"n2");
        let mine = from_wire(to_wire(&original, &n2), &mut origins).unwrap();
        assert_eq!(
            mine.message.origin, None,
            "a message published here is recognised as such"
        );
        assert_eq!(back.topic, original.topic);
        assert_eq!(back.payload, original.payload);
        assert_eq!(back.qos, QoS::ExactlyOnce);
        assert!(back.retain);
        assert_eq!(
            back.properties.user_properties,
            original.properties.user_properties
        );
        assert_eq!(
            back.properties.correlation_data,
            original.properties.correlation_data
        );
        assert!(
            back.remaining_expiry(Instant::now())
                .is_some_and(|s| (59..=60).contains(&s))
        );
    }

    /// A QoS 0 message on `t` with nothing else set.
    fn plain_message() -> Message {
        Message::new(
            "t".into(),
            Bytes::new(),
            QoS::AtMostOnce,
            false,
            PublishProperties::default(),
            None,
        )
    }

    #[test]
    fn messages_from_one_node_share_its_name() {
        let mut origins = Origins::new(Arc::from("n2"));
        let message = plain_message();
        let n1 = Bytes::from_static(b"n1");
        let first = from_wire(to_wire(&message, &n1), &mut origins).unwrap();
        let second = from_wire(to_wire(&message, &n1), &mut origins).unwrap();
        let (Some(a), Some(b)) = (&first.message.origin, &second.message.origin) else {
            panic!("both messages name n1");
        };
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        let n3 = Bytes::from_static(b"n3");
        let third = from_wire(to_wire(&message, &n3), &mut origins).unwrap();
        assert_eq!(third.message.origin.as_deref(), Some("n3"));
    }

    #[test]
    fn a_topic_or_origin_that_is_not_utf8_is_refused() {
        let mut origins = Origins::new(Arc::from("n2"));
        let message = plain_message();
        let mut bad_topic = to_wire(&message, &Bytes::from_static(b"n1"));
        bad_topic.topic = Bytes::from_static(b"a/\xff");
        assert!(from_wire(bad_topic, &mut origins).is_none());
        let bad_origin = to_wire(&message, &Bytes::from_static(b"n\xff"));
        assert!(from_wire(bad_origin, &mut origins).is_none());
    }

    /// The direct encoding of a publish writes the bytes prost writes for
    /// the `ForwardedMessage` of [`publish_to_wire`].
    #[test]
    fn a_publish_entry_is_what_prost_writes() {
        let n1 = Bytes::from_static(b"n1");
        let mut cases = Vec::new();
        cases.push((plain_message(), true));
        let mut big = Message::new(
            "sensors/123/temperature".into(),
            Bytes::from(vec![0x5a; 70_000]),
            QoS::ExactlyOnce,
            true,
            PublishProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(3600),
                ..PublishProperties::default()
            },
            None,
        );
        big.seq = u64::MAX;
        cases.push((big, false));
        let mut relayed = Message::new(
            "a".into(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(0),
                ..PublishProperties::default()
            },
            None,
        );
        relayed.origin = Some(Origin::intern("n3"));
        relayed.seq = 0;
        cases.push((relayed, true));
        // Not the usual kind: written through the struct, same result.
        cases.push((
            Message::new(
                "b".into(),
                Bytes::new(),
                QoS::AtMostOnce,
                false,
                PublishProperties {
                    content_type: Some("text/plain".into()),
                    user_properties: vec![("k".into(), "v".into())],
                    ..PublishProperties::default()
                },
                None,
            ),
            true,
        ));
        for (message, plain) in &cases {
            let mut direct = BytesMut::new();
            put_publish_entry(message, *plain, &[], &n1, &mut direct);
            let mut through_prost = BytesMut::new();
            put_batch_entry(
                &publish_to_wire(message, *plain, &[], &n1),
                &mut through_prost,
            );
            assert_eq!(direct, through_prost, "topic {}", message.topic);
        }
    }

    /// What a test compares of a decoded message.
    fn seen(incoming: &Incoming) -> String {
        let m = &incoming.message;
        format!(
            "{} {:?} {:?} {} {:?} {:?} {} {} {:?} {}",
            m.topic,
            m.payload,
            m.qos,
            m.retain,
            m.properties,
            m.origin,
            m.seq,
            incoming.plain,
            incoming.groups,
            incoming
                .target
                .as_ref()
                .map_or(String::new(), |t| t.client_id.clone()),
        )
    }

    /// An entry that is a whole batch by itself.
    fn decode_alone(entry: Bytes, origins: &mut Origins) -> Option<Incoming> {
        decode_entry(&entry, 0..entry.len(), origins)
    }

    /// The body of `wire`'s entry, as the receiver gets it.
    fn entry_of(wire: &ForwardedMessage) -> Bytes {
        Bytes::from(wire.encode_to_vec())
    }

    #[test]
    fn an_entry_decodes_as_prost_and_from_wire_decode_it() {
        let n1 = Bytes::from_static(b"n1");
        let mut usual = Message::new(
            "s/1/t".into(),
            Bytes::from(vec![1; 300]),
            QoS::AtLeastOnce,
            true,
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(30),
                ..PublishProperties::default()
            },
            None,
        );
        usual.seq = 1 << 40;
        let with_groups = publish_to_wire(
            &plain_message(),
            false,
            &[Arc::new(ShareKey {
                group: "g".into(),
                filter: "t".into(),
            })],
            &n1,
        );
        let wires = [
            to_wire(&plain_message(), &n1),
            to_wire(&usual, &n1),
            publish_to_wire(&usual, false, &[], &Bytes::from_static(b"n9")),
            with_groups,
            ForwardedMessage {
                target_client: "moved".into(),
                target_qos: 1,
                ..to_wire(&usual, &n1)
            },
        ];
        for wire in wires {
            let mut direct = Origins::new(Arc::from("n2"));
            let mut through_prost = Origins::new(Arc::from("n2"));
            let fast = decode_alone(entry_of(&wire), &mut direct).map(|i| seen(&i));
            let slow = from_wire(wire, &mut through_prost).map(|i| seen(&i));
            assert!(fast.is_some());
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn a_broken_entry_is_refused_without_harm() {
        let mut origins = Origins::new(Arc::from("n2"));
        let good = entry_of(&to_wire(&plain_message(), &Bytes::from_static(b"n1")));
        for cut in 1..good.len() {
            // Cut anywhere, it either still parses (a whole field ends
            // there) or is refused; it never reads past its end.
            let _ = decode_alone(good.slice(..cut), &mut origins);
        }
        // A length beyond the entry, an eleven-byte varint, bits past 64.
        for broken in [
            &b"\x0a\x05ab"[..],
            &[
                0x70, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[
                0x70, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ][..],
        ] {
            assert!(decode_alone(Bytes::copy_from_slice(broken), &mut origins).is_none());
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, the direct decoding agrees with prost's.
        #[test]
        fn any_entry_decodes_as_prost_decodes_it(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut direct = Origins::new(Arc::from("n2"));
            let mut through_prost = Origins::new(Arc::from("n2"));
            let fast = decode_alone(Bytes::from(bytes.clone()), &mut direct).map(|i| seen(&i));
            let slow = ForwardedMessage::decode(&bytes[..])
                .ok()
                .and_then(|wire| from_wire(wire, &mut through_prost))
                .map(|i| seen(&i));
            proptest::prop_assert_eq!(fast, slow);
        }
    }
}
