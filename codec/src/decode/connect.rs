//! CONNECT and CONNACK bodies (section 3.1 and 3.2 of both specifications).

use crate::error::DecodeError;
use crate::packet::{ConnAck, Connect, LastWill, Packet, ProtocolVersion, QoS};
use crate::properties::section;
use crate::properties::{ConnectProperties, WillProperties};
use crate::reason::ReasonCode;
use crate::topic::validate_topic_name;
use crate::wire::Reader;

use super::reasons;

/// CONNECT, read by the protocol level it announces.
pub(super) fn connect(mut r: Reader) -> Result<Packet, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        // MQTT-3.1.2-2: the server answers with "unacceptable protocol
        // version", so the level is what the caller needs. A known level
        // under the other version's name ("MQTT" level 3) is answered the
        // same way, as Mosquitto does: the name is a real MQTT name, so the
        // client can read the refusal, where a silent close leaves a
        // misconfigured device retrying blind.
        (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => {
            return Err(DecodeError::Protocol(
                "protocol name is not MQTT (MQTT-3.1.2-1)",
            ));
        }
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT reserved flag must be 0 (MQTT-3.1.2-3)",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        // 3.1.1 MQTT-3.1.2-14; 5.0 MQTT-3.1.2-12.
        return Err(DecodeError::Malformed("Will QoS 3"));
    };
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        // 3.1.1 MQTT-3.1.2-13, MQTT-3.1.2-15; 5.0 MQTT-3.1.2-11, MQTT-3.1.2-13.
        return Err(DecodeError::Malformed(
            "Will QoS and Will Retain must be 0 without a Will",
        ));
    }
    if !v5 && password_flag && !username_flag {
        // 3.1.1 MQTT-3.1.2-22; MQTT 5 allows a password alone (3.1.2.9).
        return Err(DecodeError::Malformed(
            "password flag set without user name flag (MQTT-3.1.2-22)",
        ));
    }
    let keep_alive = r.u16()?;

    let properties: ConnectProperties = if v5 {
        section::read(&mut r)?
    } else {
        Default::default()
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "Authentication Data without Authentication Method (3.1.2.11.10)",
        ));
    }

    // The payload fields come in this fixed order (3.1.3).
    let client_id = r.string()?;
    let will = if will_flag {
        let properties: WillProperties = if v5 {
            section::read(&mut r)?
        } else {
            Default::default()
        };
        let topic = r.string()?;
        if validate_topic_name(&topic).is_err() {
            // The Will Topic is the topic name the Will is published to.
            return Err(DecodeError::TopicNameInvalid(
                "Will Topic must be a non-empty topic name without wildcards",
            ));
        }
        let payload = r.binary()?;
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err()
        {
            // 3.1.3.2.3: the receiver may check the Will Payload's format.
            return Err(DecodeError::PayloadFormatInvalid);
        }
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    // Some MQTT 3.1 clients set the User Name or Password flag with nothing
    // after it; brokers of that era (Mosquitto still) read that as no user
    // name or password, so 3.1 does here too. 3.1.1 and 5.0 are strict
    // (MQTT-3.1.2-19, MQTT-3.1.2-21).
    let lenient = protocol == ProtocolVersion::V3_1 && r.is_empty();
    let username = if username_flag && !lenient {
        Some(r.string()?)
    } else {
        None
    };
    let lenient = protocol == ProtocolVersion::V3_1 && r.is_empty();
    let password = if password_flag && !lenient {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;

    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

/// CONNACK. In 3.1/3.1.1 the code is kept as the return code on the wire.
pub(super) fn connack(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    let code = r.u8()?;
    let session_present = match version {
        // MQTT 3.1 has no Session Present: the whole byte is "not used".
        ProtocolVersion::V3_1 => false,
        _ if flags & 0xFE != 0 => {
            // 3.1.1 section 3.2.2.1; 5.0 section 3.2.2.1.1.
            return Err(DecodeError::Malformed(
                "CONNACK acknowledge flags 7-1 are reserved",
            ));
        }
        _ => flags & 0x01 != 0,
    };
    let (code, properties) = if version.is_v5() {
        let code = reasons::check(
            code,
            reasons::CONNACK,
            "reason code not allowed in CONNACK (3.2.2.2)",
        )?;
        (code, section::read(&mut r)?)
    } else if code <= 5 {
        (ReasonCode(code), Default::default())
    } else {
        // 3.1.1 table 3.1: 6-255 are reserved.
        return Err(DecodeError::Protocol("CONNACK return code above 5"));
    };
    if session_present && code != ReasonCode::SUCCESS {
        // 3.1.1 MQTT-3.2.2-4; 5.0 MQTT-3.2.2-6.
        return Err(DecodeError::Protocol(
            "Session Present set on a refused connection",
        ));
    }
    r.finish()?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}
