//! Decoding packets from a connection's read buffer.
//!
//! This file frames packets (fixed header, remaining length, size limit) and
//! dispatches on the packet type; the bodies are read by the submodules.

mod connect;
mod publish;
mod reasons;
mod subscribe;

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{Auth, Disconnect, Packet, ProtocolVersion};
use crate::properties::section;
use crate::reason::ReasonCode;
use crate::wire::{Reader, parse_vbi, vbi_len};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing is
/// consumed), `Ok(Some(packet))` after splitting the packet's bytes off `buf`
/// (payloads and strings share that allocation: zero-copy), or an error when
/// the bytes can never become a valid packet.
///
/// `version` is the protocol level negotiated by this connection's CONNECT;
/// a CONNECT itself is decoded by the version it announces. `max_packet_size`
/// bounds the whole packet (fixed header included): a larger announced
/// remaining length is rejected as soon as the fixed header is readable,
/// before any of it is buffered.
///
/// After an error the packet may or may not have been taken off `buf`; the
/// connection is unusable either way (both specifications require closing
/// it). The decoder never reserves space in `buf`.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // The first byte alone can condemn the stream: fail before waiting.
    check_fixed_header(first, version)?;
    let Some((remaining, length_bytes)) = read_remaining_length(buf)? else {
        return Ok(None);
    };
    let header_len = 1 + length_bytes;
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(header_len);
    let r = Reader::new(body);
    if first >> 4 == 3 {
        // The hot path, built straight into the return value: each extra
        // move of a `Packet` is a 264-byte memcpy.
        return publish::publish(first, r, version);
    }
    decode_body(first, r, version).map(Some)
}

/// Reads the Variable Byte Integer remaining length that starts at `buf[1]`.
/// Returns `Ok(None)` when more bytes are needed, else `(remaining_length,
/// bytes_used_by_it)`.
pub fn read_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    match buf.get(1..) {
        Some(rest) => parse_vbi(rest),
        None => Ok(None),
    }
}

/// The size of the fixed header for a given remaining length (2..=5).
pub fn fixed_header_len(remaining_length: usize) -> usize {
    1 + vbi_len(remaining_length)
}

/// The packet type and flag rules of the first byte: 3.1.1 section 2.2
/// (MQTT-2.2.2-1, MQTT-2.2.2-2) and 5.0 section 2.1.3 (MQTT-2.1.3-1).
fn check_fixed_header(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let flags = first & 0x0F;
    match first >> 4 {
        0 => Err(DecodeError::Malformed("packet type 0 is reserved")),
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                // MQTT-3.3.1-4 (both versions).
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                // MQTT-3.3.1-2 (both versions).
                return Err(DecodeError::Malformed("PUBLISH with DUP set and QoS 0"));
            }
            Ok(())
        }
        // MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1. MQTT 3.1 gave these
        // packets QoS 1 and let retransmissions set DUP, so DUP is tolerated
        // there.
        6 | 8 | 10 if flags == 0b0010 => Ok(()),
        6 | 8 | 10 if flags == 0b1010 && version == ProtocolVersion::V3_1 => Ok(()),
        6 | 8 | 10 => Err(DecodeError::Malformed(
            "PUBREL, SUBSCRIBE and UNSUBSCRIBE need fixed header flags 0010",
        )),
        15 if !version.is_v5() => Err(DecodeError::Malformed("AUTH exists only in MQTT 5")),
        _ if flags != 0 => Err(DecodeError::Malformed(
            "reserved fixed header flags must be 0",
        )),
        _ => Ok(()),
    }
}

fn decode_body(first: u8, r: Reader, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    match first >> 4 {
        1 => connect::connect(r),
        2 => connect::connack(r, version).map(Packet::ConnAck),
        4 => publish::ack(r, version, &publish::PUBACK).map(Packet::PubAck),
        5 => publish::ack(r, version, &publish::PUBREC).map(Packet::PubRec),
        6 => publish::ack(r, version, &publish::PUBREL).map(Packet::PubRel),
        7 => publish::ack(r, version, &publish::PUBCOMP).map(Packet::PubComp),
        8 => subscribe::subscribe(r, version).map(Packet::Subscribe),
        9 => subscribe::suback(r, version).map(Packet::SubAck),
        10 => subscribe::unsubscribe(r, version).map(Packet::Unsubscribe),
        11 => subscribe::unsuback(r, version).map(Packet::UnsubAck),
        12 => r.finish().map(|()| Packet::PingReq),
        13 => r.finish().map(|()| Packet::PingResp),
        14 => disconnect(r, version).map(Packet::Disconnect),
        15 => auth(r).map(Packet::Auth),
        // Type 0 was rejected with the fixed header; PUBLISH never gets here.
        _ => Err(DecodeError::Malformed("packet type 0 is reserved")),
    }
}

/// DISCONNECT: no body before MQTT 5; in MQTT 5 the reason code and the
/// properties may each be left off (3.14.2.1, 3.14.2.2.1).
fn disconnect(mut r: Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    if !version.is_v5() || r.is_empty() {
        r.finish()?;
        return Ok(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
    }
    let code = reasons::check(
        r.u8()?,
        reasons::DISCONNECT,
        "reason code not allowed in DISCONNECT (MQTT-3.14.2-1)",
    )?;
    let properties = if r.is_empty() {
        Default::default()
    } else {
        section::read(&mut r)?
    };
    r.finish()?;
    Ok(Disconnect { code, properties })
}

/// AUTH: an empty body means Success without properties (3.15.2.1); the
/// properties length may not be left off on its own.
fn auth(mut r: Reader) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let code = reasons::check(
        r.u8()?,
        reasons::AUTH,
        "reason code not allowed in AUTH (MQTT-3.15.2-1)",
    )?;
    let properties = section::read(&mut r)?;
    r.finish()?;
    Ok(Auth { code, properties })
}
