//! The control packets of MQTT 3.1, 3.1.1 and 5.0.
//!
//! One set of types serves every protocol version: fields that only exist in
//! MQTT 5 (properties, reason codes on acks) are ignored when encoding for an
//! older version and left at their defaults when decoding one.

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    MessageProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use crate::reason::ReasonCode;

/// The protocol level carried in CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V3_1,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V3_1_1,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Any control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    /// Not boxed, though its properties make it the largest variant (a
    /// `Packet` of 264 bytes rather than 128): boxed, the broker's idle
    /// connections measured about 20 bytes more each (`conn-idle`, 5
    /// alternating pairs; why was not pinned down, presumably where the
    /// short-lived box lands among the connections' long-lived memory).
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

impl Packet {
    /// The control packet type, the high nibble of the first byte.
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT. The protocol version travels inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// "Clean Session" in 3.1/3.1.1, "Clean Start" in 5.0.
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// May be empty (the server then assigns one, or rejects it per version rules).
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The Will Message carried by CONNECT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWill {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK. `code` is a v5 reason code; for 3.1/3.1.1 it must be one of the
/// return codes 0..=5 (see [`ReasonCode::to_v3_connack`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH. `packet_id` is 0 for QoS 0 and non-zero otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty only in MQTT 5 when a Topic Alias is present.
    pub topic: ByteString,
    pub packet_id: u16,
    pub properties: MessageProperties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PubAck {
    pub packet_id: u16,
    /// Success (0x00) unless MQTT 5 says otherwise.
    pub code: ReasonCode,
    pub properties: AckProperties,
}

impl PubAck {
    pub fn new(packet_id: u16) -> PubAck {
        PubAck {
            packet_id,
            code: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }
    }
}

/// What a client may do with retained messages when it subscribes (v5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe,
    /// 1: send them only if the subscription did not exist before.
    SendIfNew,
    /// 2: never send them.
    DoNotSend,
}

/// The Subscription Options byte. In 3.1/3.1.1 only `qos` is meaningful.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// Not validated as a filter by the decoder (only UTF-8 and non-empty):
    /// a bad filter fails that one subscription, not the whole packet.
    pub filter: ByteString,
    pub options: SubscriptionOptions,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: SubscribeProperties,
    /// At least one.
    pub filters: Vec<SubscribeFilter>,
}

/// SUBACK. For 3.1/3.1.1 each code is 0x00, 0x01, 0x02 or 0x80.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: AckProperties,
    pub codes: Vec<ReasonCode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: UnsubscribeProperties,
    /// At least one.
    pub filters: Vec<ByteString>,
}

/// UNSUBACK. `codes` is empty on the wire for 3.1/3.1.1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: AckProperties,
    pub codes: Vec<ReasonCode>,
}

/// DISCONNECT. 3.1/3.1.1 carry neither reason nor properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub code: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    pub fn new(code: ReasonCode) -> Disconnect {
        Disconnect {
            code,
            properties: DisconnectProperties::default(),
        }
    }
}

/// AUTH (MQTT 5 only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    pub code: ReasonCode,
    pub properties: AuthProperties,
}
