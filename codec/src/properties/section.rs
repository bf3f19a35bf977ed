//! Reading and writing MQTT 5 property sections (section 2.2.2).
//!
//! One table per property struct says which identifiers the packet allows
//! and how each value is encoded; the reader, the sizer and the writer are
//! all generated from it, so they cannot disagree about a property.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperty, WillProperties,
    id,
};
use crate::wire::{MAX_VBI, Reader, prefixed_len, put_prefixed, put_vbi, vbi_len};

/// A property struct that can be read from and written to the wire.
pub(crate) trait Properties: Default {
    /// Reads the value of property `id`, whose identifier was just read.
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError>;
    /// Hands every present property to `sink`, in table order.
    fn visit<S: Sink>(&self, sink: &mut S);
}

/// Receives properties by wire representation (section 1.5).
pub(crate) trait Sink {
    fn byte(&mut self, id: u8, value: u8);
    fn two(&mut self, id: u8, value: u16);
    fn four(&mut self, id: u8, value: u32);
    fn vbi(&mut self, id: u8, value: u32);
    /// A UTF-8 string or binary data: both are length-prefixed bytes.
    fn prefixed(&mut self, id: u8, value: &[u8]);
    fn pair(&mut self, id: u8, key: &[u8], value: &[u8]);
}

/// Reads a property section: its Variable Byte Integer length, then
/// properties until exactly that many bytes are used.
pub(crate) fn read<P: Properties>(r: &mut Reader) -> Result<P, DecodeError> {
    let mut props = P::default();
    read_into(r, &mut props)?;
    Ok(props)
}

/// [`read`] into a struct that is already in place (a PUBLISH's properties
/// are large enough that moving them shows up in profiles).
pub(crate) fn read_into<P: Properties>(r: &mut Reader, props: &mut P) -> Result<(), DecodeError> {
    let len = r.vbi()? as usize;
    if len > r.remaining() {
        return Err(DecodeError::Malformed("properties overrun the packet"));
    }
    let end = r.remaining() - len;
    while r.remaining() > end {
        // Identifiers are Variable Byte Integers, but every defined one is
        // below 0x80: a byte with the high bit set is an undefined id anyway.
        let id = r.u8()?;
        props.read_one(id, r)?;
    }
    if r.remaining() != end {
        return Err(DecodeError::Malformed(
            "a property overruns the property length",
        ));
    }
    Ok(())
}

/// The size of the properties of `props`, without the length prefix.
pub(crate) fn content_len<P: Properties>(props: &P) -> Result<usize, EncodeError> {
    let mut sizer = Sizer { len: 0, err: None };
    props.visit(&mut sizer);
    match sizer.err {
        Some(err) => Err(err),
        None if sizer.len > MAX_VBI => Err(EncodeError::TooLong("property section")),
        None => Ok(sizer.len),
    }
}

/// The size of a whole property section whose content is `content_len`.
pub(crate) fn section_len(content_len: usize) -> usize {
    vbi_len(content_len) + content_len
}

/// Writes a property section; `content_len` comes from [`content_len`].
pub(crate) fn write<P: Properties>(props: &P, content_len: usize, buf: &mut BytesMut) {
    put_vbi(buf, content_len);
    // Most packets have no properties: skip looking at each field again.
    if content_len != 0 {
        props.visit(&mut Writer(buf));
    }
}

struct Sizer {
    len: usize,
    err: Option<EncodeError>,
}

impl Sizer {
    fn add(&mut self, len: Result<usize, EncodeError>) {
        match len {
            Ok(len) => self.len += len,
            Err(err) => self.err = Some(err),
        }
    }
}

impl Sink for Sizer {
    fn byte(&mut self, _: u8, _: u8) {
        self.len += 2;
    }
    fn two(&mut self, _: u8, _: u16) {
        self.len += 3;
    }
    fn four(&mut self, _: u8, _: u32) {
        self.len += 5;
    }
    fn vbi(&mut self, _: u8, value: u32) {
        let value = value as usize;
        if value > MAX_VBI {
            self.err = Some(EncodeError::TooLong("variable byte integer property"));
        }
        self.len += 1 + vbi_len(value);
    }
    fn prefixed(&mut self, _: u8, value: &[u8]) {
        self.add(prefixed_len(value.len(), "property value").map(|n| n + 1));
    }
    fn pair(&mut self, _: u8, key: &[u8], value: &[u8]) {
        self.add(prefixed_len(key.len(), "user property name").map(|n| n + 1));
        self.add(prefixed_len(value.len(), "user property value"));
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl Sink for Writer<'_> {
    fn byte(&mut self, id: u8, value: u8) {
        self.0.put_u8(id);
        self.0.put_u8(value);
    }
    fn two(&mut self, id: u8, value: u16) {
        self.0.put_u8(id);
        self.0.put_u16(value);
    }
    fn four(&mut self, id: u8, value: u32) {
        self.0.put_u8(id);
        self.0.put_u32(value);
    }
    fn vbi(&mut self, id: u8, value: u32) {
        self.0.put_u8(id);
        put_vbi(self.0, value as usize);
    }
    fn prefixed(&mut self, id: u8, value: &[u8]) {
        self.0.put_u8(id);
        put_prefixed(self.0, value);
    }
    fn pair(&mut self, id: u8, key: &[u8], value: &[u8]) {
        self.0.put_u8(id);
        put_prefixed(self.0, key);
        put_prefixed(self.0, value);
    }
}

/// How each kind of property value is read, checked and visited. The
/// checks are the single-property rules of MQTT 5.0 section 3.
mod kind {
    use super::*;
    use crate::packet::QoS;

    const TWICE: DecodeError = DecodeError::Protocol("property appears more than once");

    /// Every property but User Property and (in PUBLISH) Subscription
    /// Identifier may appear at most once (section 2.2.2.2).
    fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
        if slot.is_some() {
            return Err(TWICE);
        }
        *slot = Some(value);
        Ok(())
    }

    /// Payload Format Indicator: 0 or 1 (3.1.3.2.3, 3.3.2.3.2).
    pub(super) mod format {
        use super::*;
        pub(crate) fn read(slot: &mut Option<u8>, r: &mut Reader) -> Result<(), DecodeError> {
            match r.u8()? {
                v @ (0 | 1) => once(slot, v),
                _ => Err(DecodeError::Protocol(
                    "Payload Format Indicator must be 0 or 1",
                )),
            }
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<u8>, s: &mut S) {
            if let Some(v) = *slot {
                s.byte(id, v);
            }
        }
    }

    /// The yes/no bytes (Request Problem/Response Information, Retain,
    /// Wildcard, Subscription Identifier and Shared Subscription Available):
    /// any value but 0 or 1 is a Protocol Error.
    pub(super) mod flag {
        use super::*;
        pub(crate) fn read(slot: &mut Option<bool>, r: &mut Reader) -> Result<(), DecodeError> {
            match r.u8()? {
                0 => once(slot, false),
                1 => once(slot, true),
                _ => Err(DecodeError::Protocol("boolean property must be 0 or 1")),
            }
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<bool>, s: &mut S) {
            if let Some(v) = *slot {
                s.byte(id, u8::from(v));
            }
        }
    }

    /// Maximum QoS: 0 or 1 (3.2.2.3.4; absent means 2).
    pub(super) mod qos {
        use super::*;
        pub(crate) fn read(slot: &mut Option<QoS>, r: &mut Reader) -> Result<(), DecodeError> {
            match r.u8()? {
                0 => once(slot, QoS::AtMostOnce),
                1 => once(slot, QoS::AtLeastOnce),
                _ => Err(DecodeError::Protocol("Maximum QoS must be 0 or 1")),
            }
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<QoS>, s: &mut S) {
            if let Some(v) = *slot {
                s.byte(id, v.as_u8());
            }
        }
    }

    pub(super) mod two {
        use super::*;
        pub(crate) fn read(slot: &mut Option<u16>, r: &mut Reader) -> Result<(), DecodeError> {
            once(slot, r.u16()?)
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<u16>, s: &mut S) {
            if let Some(v) = *slot {
                s.two(id, v);
            }
        }
    }

    /// Receive Maximum (3.1.2.11.3, 3.2.2.3.3) and Topic Alias (3.3.2.3.4):
    /// 0 is a Protocol Error.
    pub(super) mod nonzero_two {
        use super::*;
        pub(crate) fn read(slot: &mut Option<u16>, r: &mut Reader) -> Result<(), DecodeError> {
            match r.u16()? {
                0 => Err(DecodeError::Protocol(
                    "Receive Maximum and Topic Alias must not be 0",
                )),
                v => once(slot, v),
            }
        }
        pub(crate) use super::two::visit;
    }

    pub(super) mod four {
        use super::*;
        pub(crate) fn read(slot: &mut Option<u32>, r: &mut Reader) -> Result<(), DecodeError> {
            once(slot, r.u32()?)
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<u32>, s: &mut S) {
            if let Some(v) = *slot {
                s.four(id, v);
            }
        }
    }

    /// Maximum Packet Size: 0 is a Protocol Error (3.1.2.11.4, 3.2.2.3.6).
    pub(super) mod nonzero_four {
        use super::*;
        pub(crate) fn read(slot: &mut Option<u32>, r: &mut Reader) -> Result<(), DecodeError> {
            match r.u32()? {
                0 => Err(DecodeError::Protocol("Maximum Packet Size must not be 0")),
                v => once(slot, v),
            }
        }
        pub(crate) use super::four::visit;
    }

    /// Subscription Identifier: 1..=268,435,455 (3.3.2.3.8, 3.8.2.1.2).
    fn subscription_id(r: &mut Reader) -> Result<u32, DecodeError> {
        match r.vbi()? {
            0 => Err(DecodeError::Protocol(
                "Subscription Identifier must not be 0",
            )),
            v => Ok(v),
        }
    }

    pub(super) mod subscription_id {
        use super::*;
        pub(crate) fn read(slot: &mut Option<u32>, r: &mut Reader) -> Result<(), DecodeError> {
            once(slot, super::subscription_id(r)?)
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<u32>, s: &mut S) {
            if let Some(v) = *slot {
                s.vbi(id, v);
            }
        }
    }

    /// A PUBLISH carries one Subscription Identifier per matching
    /// subscription, so it may repeat there.
    pub(super) mod subscription_ids {
        use super::*;
        pub(crate) fn read(slot: &mut Vec<u32>, r: &mut Reader) -> Result<(), DecodeError> {
            slot.push(super::subscription_id(r)?);
            Ok(())
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &[u32], s: &mut S) {
            for &v in slot {
                s.vbi(id, v);
            }
        }
    }

    pub(super) mod string {
        use super::*;
        pub(crate) fn read(
            slot: &mut Option<ByteString>,
            r: &mut Reader,
        ) -> Result<(), DecodeError> {
            once(slot, r.string()?)
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<ByteString>, s: &mut S) {
            if let Some(v) = slot {
                s.prefixed(id, v.as_bytes());
            }
        }
    }

    /// Response Topic: a topic name, so no wildcards (MQTT-3.3.2-14; in the
    /// Will Properties it is likewise "used as the Topic Name for a
    /// response message", 3.1.3.2.5).
    pub(super) mod topic {
        use super::*;
        pub(crate) fn read(
            slot: &mut Option<ByteString>,
            r: &mut Reader,
        ) -> Result<(), DecodeError> {
            let topic = r.string()?;
            if crate::topic::validate_topic_name(&topic).is_err() {
                return Err(DecodeError::Protocol(
                    "Response Topic must be a topic name without wildcards",
                ));
            }
            once(slot, topic)
        }
        pub(crate) use super::string::visit;
    }

    pub(super) mod binary {
        use super::*;
        pub(crate) fn read(slot: &mut Option<Bytes>, r: &mut Reader) -> Result<(), DecodeError> {
            once(slot, r.binary()?)
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &Option<Bytes>, s: &mut S) {
            if let Some(v) = slot {
                s.prefixed(id, v);
            }
        }
    }

    /// User Property: may appear any number of times; order is kept.
    pub(super) mod user {
        use super::*;
        pub(crate) fn read(
            slot: &mut Vec<UserProperty>,
            r: &mut Reader,
        ) -> Result<(), DecodeError> {
            let key = r.string()?;
            let value = r.string()?;
            slot.push((key, value));
            Ok(())
        }
        pub(crate) fn visit<S: Sink>(id: u8, slot: &[UserProperty], s: &mut S) {
            for (key, value) in slot {
                s.pair(id, key.as_bytes(), value.as_bytes());
            }
        }
    }
}

/// Generates [`Properties`] for a struct from its table of
/// `IDENTIFIER => field: kind`. An identifier not in the table is a
/// Malformed Packet (section 2.2.2.2).
macro_rules! properties {
    ($($ty:ty { $($id:ident => $field:ident: $kind:ident),* $(,)? })*) => {$(
        impl Properties for $ty {
            fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
                match id {
                    $(id::$id => kind::$kind::read(&mut self.$field, r),)*
                    _ => Err(DecodeError::Malformed(
                        "property identifier not allowed in this packet",
                    )),
                }
            }

            fn visit<S: Sink>(&self, sink: &mut S) {
                $(kind::$kind::visit(id::$id, &self.$field, sink);)*
            }
        }
    )*};
}

properties! {
    ConnectProperties {
        SESSION_EXPIRY_INTERVAL => session_expiry_interval: four,
        RECEIVE_MAXIMUM => receive_maximum: nonzero_two,
        MAXIMUM_PACKET_SIZE => maximum_packet_size: nonzero_four,
        TOPIC_ALIAS_MAXIMUM => topic_alias_maximum: two,
        REQUEST_RESPONSE_INFORMATION => request_response_information: flag,
        REQUEST_PROBLEM_INFORMATION => request_problem_information: flag,
        USER_PROPERTY => user_properties: user,
        AUTHENTICATION_METHOD => authentication_method: string,
        AUTHENTICATION_DATA => authentication_data: binary,
    }

    WillProperties {
        WILL_DELAY_INTERVAL => will_delay_interval: four,
        PAYLOAD_FORMAT_INDICATOR => payload_format_indicator: format,
        MESSAGE_EXPIRY_INTERVAL => message_expiry_interval: four,
        CONTENT_TYPE => content_type: string,
        RESPONSE_TOPIC => response_topic: topic,
        CORRELATION_DATA => correlation_data: binary,
        USER_PROPERTY => user_properties: user,
    }

    ConnAckProperties {
        SESSION_EXPIRY_INTERVAL => session_expiry_interval: four,
        RECEIVE_MAXIMUM => receive_maximum: nonzero_two,
        MAXIMUM_QOS => maximum_qos: qos,
        RETAIN_AVAILABLE => retain_available: flag,
        MAXIMUM_PACKET_SIZE => maximum_packet_size: nonzero_four,
        ASSIGNED_CLIENT_IDENTIFIER => assigned_client_identifier: string,
        TOPIC_ALIAS_MAXIMUM => topic_alias_maximum: two,
        REASON_STRING => reason_string: string,
        USER_PROPERTY => user_properties: user,
        WILDCARD_SUBSCRIPTION_AVAILABLE => wildcard_subscription_available: flag,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => subscription_identifiers_available: flag,
        SHARED_SUBSCRIPTION_AVAILABLE => shared_subscription_available: flag,
        SERVER_KEEP_ALIVE => server_keep_alive: two,
        RESPONSE_INFORMATION => response_information: string,
        SERVER_REFERENCE => server_reference: string,
        AUTHENTICATION_METHOD => authentication_method: string,
        AUTHENTICATION_DATA => authentication_data: binary,
    }

    PublishProperties {
        PAYLOAD_FORMAT_INDICATOR => payload_format_indicator: format,
        MESSAGE_EXPIRY_INTERVAL => message_expiry_interval: four,
        TOPIC_ALIAS => topic_alias: nonzero_two,
        RESPONSE_TOPIC => response_topic: topic,
        CORRELATION_DATA => correlation_data: binary,
        USER_PROPERTY => user_properties: user,
        SUBSCRIPTION_IDENTIFIER => subscription_identifiers: subscription_ids,
        CONTENT_TYPE => content_type: string,
    }

    AckProperties {
        REASON_STRING => reason_string: string,
        USER_PROPERTY => user_properties: user,
    }

    SubscribeProperties {
        SUBSCRIPTION_IDENTIFIER => subscription_identifier: subscription_id,
        USER_PROPERTY => user_properties: user,
    }

    UnsubscribeProperties {
        USER_PROPERTY => user_properties: user,
    }

    DisconnectProperties {
        SESSION_EXPIRY_INTERVAL => session_expiry_interval: four,
        REASON_STRING => reason_string: string,
        USER_PROPERTY => user_properties: user,
        SERVER_REFERENCE => server_reference: string,
    }

    AuthProperties {
        AUTHENTICATION_METHOD => authentication_method: string,
        AUTHENTICATION_DATA => authentication_data: binary,
        REASON_STRING => reason_string: string,
        USER_PROPERTY => user_properties: user,
    }
}
