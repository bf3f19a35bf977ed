//! The reason codes each MQTT 5 packet may carry (section 2.4 and the
//! per-packet tables of section 3). A sender "MUST use one of" them, so any
//! other value is a Protocol Error, as other brokers treat it.

use crate::error::DecodeError;
use crate::reason::ReasonCode;

/// Table 3-1 (3.2.2.2).
pub(super) const CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

/// PUBACK (3.4.2.1, MQTT-3.4.2-1) and PUBREC (3.5.2.1, MQTT-3.5.2-1).
pub(super) const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];

/// PUBREL (3.6.2.1, MQTT-3.6.2-1) and PUBCOMP (3.7.2.1, MQTT-3.7.2-1).
pub(super) const PUBREL: &[u8] = &[0x00, 0x92];

/// SUBACK (3.9.3).
pub(super) const SUBACK: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];

/// UNSUBACK (3.11.3).
pub(super) const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];

/// DISCONNECT (3.14.2.1, MQTT-3.14.2-1).
pub(super) const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

/// AUTH (3.15.2.1, MQTT-3.15.2-1).
pub(super) const AUTH: &[u8] = &[0x00, 0x18, 0x19];

/// MQTT 3.1.1 SUBACK return codes (MQTT-3.9.3-2).
pub(super) const V3_SUBACK: &[u8] = &[0x00, 0x01, 0x02, 0x80];

/// `code` if `allowed` lists it, else a Protocol Error saying `what`.
pub(super) fn check(
    code: u8,
    allowed: &[u8],
    what: &'static str,
) -> Result<ReasonCode, DecodeError> {
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::Protocol(what))
    }
}
