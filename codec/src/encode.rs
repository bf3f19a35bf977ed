//! Encoding packets into a connection's write buffer.
//!
//! Every packet is sized first (which is also where every length limit is
//! checked), so `encode` reserves once and then writes without failing, and
//! `encoded_len` is the same sizing code.

use bytes::{BufMut, BytesMut};

use crate::decode::fixed_header_len;
use crate::error::EncodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubAck, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::properties::PublishProperties;
use crate::properties::section::{self, Properties};
use crate::reason::ReasonCode;
use crate::wire::{MAX_VBI, prefixed_len, put_fixed_header, put_prefixed};

/// Appends `packet`, encoded for `version`, to `buf`. Fields the version does
/// not have (properties, reason codes before MQTT 5) are left out.
///
/// A CONNECT is encoded for the protocol it carries (`Connect::protocol`),
/// mirroring [`decode`](crate::decode). On error nothing is appended.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let sizes = size(packet, version)?;
    buf.reserve(fixed_header_len(sizes.remaining) + sizes.remaining);
    put_fixed_header(buf, first_byte(packet), sizes.remaining);
    write(packet, version, &sizes, buf);
    Ok(())
}

/// The number of bytes [`encode`] would append, fixed header included. Used
/// to honour a peer's Maximum Packet Size before encoding.
///
/// A packet that [`encode`] refuses appends nothing, so its length is 0.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match size(packet, version) {
        Ok(sizes) => fixed_header_len(sizes.remaining) + sizes.remaining,
        Err(_) => 0,
    }
}

/// A PUBLISH to encode that borrows its topic, properties and payload.
///
/// A broker writes every delivery of a message from the one shared copy:
/// building a [`Publish`] for each would take (and later drop) a reference
/// on the topic's and the payload's buffers per delivery, two atomic
/// updates each of a count that the receiving thread touches too.
#[derive(Clone, Copy, Debug)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty only in MQTT 5 when a Topic Alias is present.
    pub topic: &'a str,
    pub packet_id: u16,
    /// `None` when there are none (the usual case).
    pub properties: Option<&'a PublishProperties>,
    pub payload: &'a [u8],
}

impl Publish {
    /// This PUBLISH as a [`PublishRef`].
    pub fn as_ref(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: self.properties.boxed(),
            payload: &self.payload,
        }
    }
}

/// Appends `publish`, encoded for `version`, to `buf`: the same bytes as
/// [`encode`] of the equivalent [`Packet::Publish`]. On error nothing is
/// appended.
pub fn encode_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let sizes = publish_sizes(publish, version.is_v5())?;
    buf.reserve(fixed_header_len(sizes.remaining) + sizes.remaining);
    put_fixed_header(buf, publish_first_byte(publish), sizes.remaining);
    write_publish(publish, version.is_v5(), &sizes, buf);
    Ok(())
}

/// The number of bytes [`encode_publish`] would append (0 if it would
/// refuse).
pub fn publish_encoded_len(publish: &PublishRef<'_>, version: ProtocolVersion) -> usize {
    match publish_sizes(publish, version.is_v5()) {
        Ok(sizes) => fixed_header_len(sizes.remaining) + sizes.remaining,
        Err(_) => 0,
    }
}

fn publish_first_byte(p: &PublishRef<'_>) -> u8 {
    3 << 4 | u8::from(p.dup) << 3 | p.qos.as_u8() << 1 | u8::from(p.retain)
}

fn publish_sizes(p: &PublishRef<'_>, v5: bool) -> Result<Sizes, EncodeError> {
    let mut sizes = Sizes {
        remaining: 0,
        props: 0,
        will_props: 0,
    };
    let mut len = prefixed_len(p.topic.len(), "topic name")? + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        len += 2;
    }
    if v5 {
        // None at all, the usual case: nothing to size.
        if let Some(properties) = p.properties {
            sizes.props = section::content_len(properties)?;
        }
        len += section::section_len(sizes.props);
    }
    if len > MAX_VBI {
        return Err(EncodeError::TooLong("packet"));
    }
    sizes.remaining = len;
    Ok(sizes)
}

/// What sizing learnt and writing needs again.
struct Sizes {
    remaining: usize,
    /// Content length of the packet's property section (MQTT 5).
    props: usize,
    /// Content length of the Will Properties (MQTT 5 CONNECT).
    will_props: usize,
}

fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(p) => return publish_first_byte(&p.as_ref()),
        // Fixed by MQTT-3.6.1-1, MQTT-3.8.1-1 and MQTT-3.10.1-1.
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    packet.packet_type() << 4 | flags
}

fn size(packet: &Packet, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
    let v5 = version.is_v5();
    let mut sizes = Sizes {
        remaining: 0,
        props: 0,
        will_props: 0,
    };
    sizes.remaining = match packet {
        Packet::Connect(c) => connect_size(c, &mut sizes)?,
        Packet::ConnAck(c) if v5 => {
            sizes.props = section::content_len(&c.properties)?;
            2 + section::section_len(sizes.props)
        }
        Packet::ConnAck(_) => 2,
        Packet::Publish(p) => {
            sizes = publish_sizes(&p.as_ref(), v5)?;
            sizes.remaining
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            if v5 {
                sizes.props = section::content_len(&a.properties)?;
            }
            2 + optional_tail(v5, a.code, sizes.props)
        }
        Packet::Subscribe(s) => {
            let mut len = 2 + v5_section(v5, &s.properties, &mut sizes)?;
            for f in &s.filters {
                len += prefixed_len(f.filter.len(), "topic filter")? + 1;
            }
            len
        }
        Packet::SubAck(s) => 2 + v5_section(v5, &s.properties, &mut sizes)? + s.codes.len(),
        Packet::Unsubscribe(u) => {
            let mut len = 2 + v5_section(v5, &u.properties, &mut sizes)?;
            for f in &u.filters {
                len += prefixed_len(f.len(), "topic filter")?;
            }
            len
        }
        Packet::UnsubAck(u) if v5 => 2 + v5_section(v5, &u.properties, &mut sizes)? + u.codes.len(),
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) if v5 => {
            sizes.props = section::content_len(&d.properties)?;
            optional_tail(true, d.code, sizes.props)
        }
        Packet::Disconnect(_) => 0,
        Packet::Auth(a) if v5 => {
            sizes.props = section::content_len(&a.properties)?;
            if a.code == ReasonCode::SUCCESS && sizes.props == 0 {
                0
            } else {
                1 + section::section_len(sizes.props)
            }
        }
        Packet::Auth(_) => {
            return Err(EncodeError::NotInVersion {
                packet: "AUTH",
                level: version.level(),
            });
        }
    };
    if sizes.remaining > MAX_VBI {
        return Err(EncodeError::TooLong("packet"));
    }
    Ok(sizes)
}

/// The property section of an MQTT 5 packet, or nothing for older ones.
fn v5_section<P: Properties>(
    v5: bool,
    properties: &P,
    sizes: &mut Sizes,
) -> Result<usize, EncodeError> {
    if !v5 {
        return Ok(0);
    }
    sizes.props = section::content_len(properties)?;
    Ok(section::section_len(sizes.props))
}

/// The reason code and property section that end an MQTT 5 acknowledgement
/// or DISCONNECT: both left off for Success without properties, the
/// properties alone left off when empty (3.4.2.1, 3.14.2.1 and the like).
/// This is the short form other brokers send.
fn optional_tail(v5: bool, code: ReasonCode, props_len: usize) -> usize {
    match (v5, props_len) {
        (false, _) => 0,
        (true, 0) if code == ReasonCode::SUCCESS => 0,
        (true, 0) => 1,
        (true, n) => 1 + section::section_len(n),
    }
}

fn connect_size(c: &Connect, sizes: &mut Sizes) -> Result<usize, EncodeError> {
    let v5 = c.protocol.is_v5();
    // Protocol name, level, flags, keep alive.
    let mut len = protocol_name(c.protocol).len() + 2 + 1 + 1 + 2;
    len += v5_section(v5, &c.properties, sizes)?;
    len += prefixed_len(c.client_id.len(), "client identifier")?;
    if let Some(will) = &c.will {
        if v5 {
            sizes.will_props = section::content_len(&will.properties)?;
            len += section::section_len(sizes.will_props);
        }
        len += prefixed_len(will.topic.len(), "will topic")?;
        len += prefixed_len(will.payload.len(), "will payload")?;
    }
    if let Some(username) = &c.username {
        len += prefixed_len(username.len(), "user name")?;
    }
    if let Some(password) = &c.password {
        len += prefixed_len(password.len(), "password")?;
    }
    Ok(len)
}

fn protocol_name(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V3_1 => b"MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => b"MQTT",
    }
}

fn write(packet: &Packet, version: ProtocolVersion, sizes: &Sizes, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => write_connect(c, sizes, buf),
        Packet::ConnAck(c) => write_connack(c, version, sizes, buf),
        Packet::Publish(p) => write_publish(&p.as_ref(), v5, sizes, buf),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write_ack(a, v5, sizes, buf)
        }
        Packet::Subscribe(s) => write_subscribe(s, v5, sizes, buf),
        Packet::SubAck(s) => write_suback(s, v5, sizes, buf),
        Packet::Unsubscribe(u) => write_unsubscribe(u, v5, sizes, buf),
        Packet::UnsubAck(u) => write_unsuback(u, v5, sizes, buf),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => write_disconnect(d, v5, sizes, buf),
        Packet::Auth(a) => write_auth(a, sizes, buf),
    }
}

fn write_connect(c: &Connect, sizes: &Sizes, buf: &mut BytesMut) {
    let v5 = c.protocol.is_v5();
    put_prefixed(buf, protocol_name(c.protocol));
    buf.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0x04 | will.qos.as_u8() << 3 | u8::from(will.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        section::write(&c.properties, sizes.props, buf);
    }
    put_prefixed(buf, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        if v5 {
            section::write(&will.properties, sizes.will_props, buf);
        }
        put_prefixed(buf, will.topic.as_bytes());
        put_prefixed(buf, &will.payload);
    }
    if let Some(username) = &c.username {
        put_prefixed(buf, username.as_bytes());
    }
    if let Some(password) = &c.password {
        put_prefixed(buf, password);
    }
}

fn write_connack(c: &ConnAck, version: ProtocolVersion, sizes: &Sizes, buf: &mut BytesMut) {
    // MQTT 3.1 has no Session Present flag: the byte is reserved.
    let session_present = c.session_present && version != ProtocolVersion::V3_1;
    buf.put_u8(u8::from(session_present));
    // For 3.1/3.1.1 the caller has already mapped the code to a return code.
    buf.put_u8(c.code.0);
    if version.is_v5() {
        section::write(&c.properties, sizes.props, buf);
    }
}

fn write_publish(p: &PublishRef<'_>, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    put_prefixed(buf, p.topic.as_bytes());
    // The hot path: the packet identifier and an empty property section go
    // out in one copy rather than one `BytesMut` call each.
    let mut between = [0u8; 3];
    let mut len = 0;
    if p.qos != QoS::AtMostOnce {
        between[..2].copy_from_slice(&p.packet_id.to_be_bytes());
        len = 2;
    }
    if v5 && sizes.props == 0 {
        // between[len] is already the zero property length.
        len += 1;
    }
    buf.put_slice(&between[..len]);
    if v5
        && sizes.props != 0
        && let Some(properties) = p.properties
    {
        section::write(properties, sizes.props, buf);
    }
    buf.put_slice(p.payload);
}

fn write_ack(a: &PubAck, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    buf.put_u16(a.packet_id);
    write_tail(v5, a.code, &a.properties, sizes.props, buf);
}

/// Writes what [`optional_tail`] sized.
fn write_tail<P: Properties>(
    v5: bool,
    code: ReasonCode,
    properties: &P,
    props_len: usize,
    buf: &mut BytesMut,
) {
    if optional_tail(v5, code, props_len) == 0 {
        return;
    }
    buf.put_u8(code.0);
    if props_len != 0 {
        section::write(properties, props_len, buf);
    }
}

fn write_subscribe(s: &Subscribe, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    buf.put_u16(s.packet_id);
    if v5 {
        section::write(&s.properties, sizes.props, buf);
    }
    for f in &s.filters {
        put_prefixed(buf, f.filter.as_bytes());
        buf.put_u8(options_byte(&f.options, v5));
    }
}

/// The Subscription Options byte; before MQTT 5 only the QoS exists.
fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    if !v5 {
        return o.qos.as_u8();
    }
    let retain_handling = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    o.qos.as_u8()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | retain_handling << 4
}

fn write_suback(s: &SubAck, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    buf.put_u16(s.packet_id);
    if v5 {
        section::write(&s.properties, sizes.props, buf);
    }
    // For 3.1/3.1.1 the caller has already mapped codes to return codes.
    for code in &s.codes {
        buf.put_u8(code.0);
    }
}

fn write_unsubscribe(u: &Unsubscribe, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    buf.put_u16(u.packet_id);
    if v5 {
        section::write(&u.properties, sizes.props, buf);
    }
    for f in &u.filters {
        put_prefixed(buf, f.as_bytes());
    }
}

fn write_unsuback(u: &UnsubAck, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    buf.put_u16(u.packet_id);
    if v5 {
        section::write(&u.properties, sizes.props, buf);
        for code in &u.codes {
            buf.put_u8(code.0);
        }
    }
}

fn write_disconnect(d: &Disconnect, v5: bool, sizes: &Sizes, buf: &mut BytesMut) {
    write_tail(v5, d.code, &d.properties, sizes.props, buf);
}

fn write_auth(a: &Auth, sizes: &Sizes, buf: &mut BytesMut) {
    if a.code == ReasonCode::SUCCESS && sizes.props == 0 {
        return;
    }
    buf.put_u8(a.code.0);
    section::write(&a.properties, sizes.props, buf);
}
