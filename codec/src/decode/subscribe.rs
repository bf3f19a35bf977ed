//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8 to 3.11).

use bytestring::ByteString;

use crate::error::DecodeError;
use crate::packet::{
    ProtocolVersion, QoS, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};
use crate::properties::section;
use crate::wire::Reader;

use super::publish::packet_id;
use super::reasons;

pub(super) fn subscribe(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if version.is_v5() {
        section::read(&mut r)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = filter(&mut r)?;
        let options = options(r.u8()?, &filter, version)?;
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        // 3.1.1 MQTT-3.8.3-3; 5.0 MQTT-3.8.3-2.
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// A topic filter: a UTF-8 string of at least one character (MQTT-4.7.3-1).
/// Its wildcards are the broker's business: a bad filter fails only its
/// own subscription.
fn filter(r: &mut Reader) -> Result<ByteString, DecodeError> {
    let filter = r.string()?;
    if filter.is_empty() {
        return Err(DecodeError::Protocol("empty topic filter (MQTT-4.7.3-1)"));
    }
    Ok(filter)
}

/// The Subscription Options byte (5.0 section 3.8.3.1; in 3.1.1 only the
/// requested QoS, section 3.8.3).
fn options(
    byte: u8,
    filter: &str,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    if !version.is_v5() {
        return match QoS::from_u8(byte) {
            Some(qos) => Ok(SubscriptionOptions {
                qos,
                ..Default::default()
            }),
            // MQTT-3.8.3-4: reserved bits 7-2 set, or QoS 3.
            None => Err(DecodeError::Malformed(
                "subscription QoS byte must be 0, 1 or 2 (MQTT-3.8.3-4)",
            )),
        };
    }
    if byte & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "subscription options bits 7-6 are reserved (MQTT-3.8.3-5)",
        ));
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::Protocol(
        "subscription Maximum QoS 3 (3.8.3.1)",
    ))?;
    let no_local = byte & 0x04 != 0;
    let retain_as_published = byte & 0x08 != 0;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::Protocol("Retain Handling 3 (3.8.3.1)")),
    };
    if no_local && filter.starts_with("$share/") {
        return Err(DecodeError::Protocol(
            "No Local on a shared subscription (MQTT-3.8.3-4)",
        ));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    })
}

pub(super) fn suback(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let (properties, allowed, what) = if version.is_v5() {
        (
            section::read(&mut r)?,
            reasons::SUBACK,
            "reason code not allowed in SUBACK (3.9.3)",
        )
    } else {
        (
            Default::default(),
            reasons::V3_SUBACK,
            "SUBACK return code not 0x00, 0x01, 0x02 or 0x80 (MQTT-3.9.3-2)",
        )
    };
    // One byte per code: sized by bytes already received, never by a
    // length the peer announced.
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        codes.push(reasons::check(r.u8()?, allowed, what)?);
    }
    if codes.is_empty() {
        // One code per topic filter of the SUBSCRIBE, which has at least one.
        return Err(DecodeError::Protocol("SUBACK without a reason code"));
    }
    Ok(SubAck {
        packet_id,
        properties,
        codes,
    })
}

pub(super) fn unsubscribe(
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if version.is_v5() {
        section::read(&mut r)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(filter(&mut r)?);
    }
    if filters.is_empty() {
        // 3.1.1 and 5.0 MQTT-3.10.3-2.
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

/// UNSUBACK: just the packet identifier before MQTT 5 (3.1.1 section 3.11).
pub(super) fn unsuback(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    if !version.is_v5() {
        r.finish()?;
        return Ok(UnsubAck {
            packet_id,
            ..Default::default()
        });
    }
    let properties = section::read(&mut r)?;
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        codes.push(reasons::check(
            r.u8()?,
            reasons::UNSUBACK,
            "reason code not allowed in UNSUBACK (3.11.3)",
        )?);
    }
    if codes.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        codes,
    })
}
