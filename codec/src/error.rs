//! Decoding and encoding errors.

use crate::reason::ReasonCode;

/// Why bytes from the network are not an acceptable packet. Every variant
/// maps to the reason code a server disconnects with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not follow the packet grammar (MQTT 5: 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A well-formed packet that breaks a rule of the protocol (MQTT 5: 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The remaining length announces more than the receiver accepts (0x95).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// CONNECT with a protocol name/level this codec does not speak (0x84;
    /// 3.1.1 return code 1).
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocolVersion(u8),
    /// A PUBLISH topic name with wildcards (0x90).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    /// A Payload Format Indicator of 1 on a payload that is not UTF-8 (0x99).
    #[error("payload is not valid UTF-8 although its format indicator says so")]
    PayloadFormatInvalid,
}

impl DecodeError {
    /// The rule the bytes broke, in words (for a Reason String).
    pub fn explanation(&self) -> &'static str {
        match self {
            DecodeError::Malformed(why)
            | DecodeError::Protocol(why)
            | DecodeError::TopicNameInvalid(why) => why,
            DecodeError::PacketTooLarge { .. } => "packet exceeds the maximum packet size",
            DecodeError::UnsupportedProtocolVersion(_) => "unsupported protocol version",
            DecodeError::PayloadFormatInvalid => {
                "payload is not valid UTF-8 although its format indicator says so"
            }
        }
    }

    /// The MQTT 5 reason code to put in the DISCONNECT (or CONNACK) sent
    /// before closing the connection.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
        }
    }
}

/// Why a packet cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet would exceed 268,435,455 bytes of remaining length, or a
    /// string/binary field would exceed 65,535 bytes.
    #[error("{0} is too long to encode")]
    TooLong(&'static str),
    /// The packet cannot be expressed in the target protocol version
    /// (AUTH before MQTT 5, say).
    #[error("{packet} does not exist in protocol level {level}")]
    NotInVersion { packet: &'static str, level: u8 },
}
