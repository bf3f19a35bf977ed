//! PUBLISH and its acknowledgements (sections 3.3 to 3.7).

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::DecodeError;
use crate::packet::{Packet, ProtocolVersion, PubAck, Publish, QoS};
use crate::properties::section;
use crate::properties::{MessageProperties, PublishProperties};
use crate::wire::Reader;

use super::reasons;

/// PUBLISH. `first` is the fixed header byte, already checked for QoS 3 and
/// for DUP on QoS 0. This is the hot path, so it returns the final
/// `Option<Packet>` itself: every move of a `Packet` is a 264-byte copy.
pub(super) fn publish(
    first: u8,
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let qos =
        QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let topic = topic_name(r.binary()?)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(&mut r)?
    };
    let mut publish = Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        packet_id,
        properties: MessageProperties::default(),
        payload: Bytes::new(),
    };
    // Most publishes have no properties (a length of 0): then there is no
    // 160-byte struct to fill and find empty.
    if version.is_v5() && !r.skip_if(0) {
        let mut read = PublishProperties::default();
        section::read_into(&mut r, &mut read)?;
        publish.properties = read.into();
    }
    let properties = &publish.properties;
    if publish.topic.is_empty() && properties.topic_alias.is_none() {
        // 3.1.1 MQTT-4.7.3-1; 5.0 section 3.3.2.1: an empty name is only a
        // reference to a Topic Alias.
        return Err(DecodeError::Protocol(
            "empty topic name without a Topic Alias",
        ));
    }
    let payload = r.rest();
    if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
        // 5.0 section 3.3.2.3.2.
        return Err(DecodeError::PayloadFormatInvalid);
    }
    publish.payload = payload;
    Ok(Some(Packet::Publish(publish)))
}

/// A PUBLISH Topic Name: a UTF-8 string without wildcards (MQTT-3.3.2-2).
fn topic_name(raw: Bytes) -> Result<ByteString, DecodeError> {
    // None of these bytes occurs inside a multi-byte UTF-8 sequence, so a
    // byte scan is exact. No early exit and a byte accumulator, so the loop
    // vectorizes: this runs on every PUBLISH.
    let mut hits = 0u8;
    for &b in raw.as_ref() {
        hits |= u8::from(b == 0) | u8::from(b == b'+') | u8::from(b == b'#');
    }
    if hits != 0 {
        if raw.contains(&0) {
            return Err(DecodeError::Malformed("UTF-8 string contains U+0000"));
        }
        return Err(DecodeError::TopicNameInvalid(
            "topic name contains a wildcard",
        ));
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))
}

/// What tells the four acknowledgements apart on decoding: the reason
/// codes they allow.
pub(super) struct AckKind {
    allowed: &'static [u8],
    error: &'static str,
}

pub(super) const PUBACK: AckKind = AckKind {
    allowed: reasons::PUBACK,
    error: "reason code not allowed in PUBACK (MQTT-3.4.2-1)",
};
pub(super) const PUBREC: AckKind = AckKind {
    allowed: reasons::PUBACK,
    error: "reason code not allowed in PUBREC (MQTT-3.5.2-1)",
};
pub(super) const PUBREL: AckKind = AckKind {
    allowed: reasons::PUBREL,
    error: "reason code not allowed in PUBREL (MQTT-3.6.2-1)",
};
pub(super) const PUBCOMP: AckKind = AckKind {
    allowed: reasons::PUBREL,
    error: "reason code not allowed in PUBCOMP (MQTT-3.7.2-1)",
};

/// PUBACK, PUBREC, PUBREL and PUBCOMP. In MQTT 5 a remaining length of 2
/// means Success without properties and 3 means no properties (3.4.2.1,
/// 3.4.2.2.1 and the same clauses of 3.5 to 3.7).
pub(super) fn ack(
    mut r: Reader,
    version: ProtocolVersion,
    kind: &AckKind,
) -> Result<PubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    if !version.is_v5() || r.is_empty() {
        r.finish()?;
        return Ok(PubAck::new(packet_id));
    }
    let code = reasons::check(r.u8()?, kind.allowed, kind.error)?;
    let properties = if r.is_empty() {
        Default::default()
    } else {
        section::read(&mut r)?
    };
    r.finish()?;
    Ok(PubAck {
        packet_id,
        code,
        properties,
    })
}

/// A Packet Identifier, which is never 0 (3.1.1 MQTT-2.3.1-1, 5.0
/// MQTT-2.2.1-3); acknowledgements echo one, so they cannot carry 0 either.
pub(super) fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("packet identifier 0")),
        id => Ok(id),
    }
}
