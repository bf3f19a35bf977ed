//! MQTT 5 properties, one struct per packet kind.
//!
//! Each struct holds exactly the properties its packet may carry (MQTT 5.0
//! section 2.2.2.2); the decoder rejects any other property identifier and
//! any property that appears twice where the specification forbids it.

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::packet::QoS;

/// Property identifiers (MQTT 5.0 table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// A User Property: a UTF-8 string pair. Order and duplicates are preserved.
pub type UserProperty = (ByteString, ByteString);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    /// Must not be 0 when present.
    pub receive_maximum: Option<u16>,
    /// Must not be 0 when present.
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<UserProperty>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    /// 0 (unspecified bytes) or 1 (UTF-8); anything else is a protocol error.
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// Only 0 or 1 may be sent (absent means 2).
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteString>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    /// Non-zero when present.
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Server to client only; may repeat; each in 1..=268_435_455.
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<ByteString>,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// In 1..=268_435_455 when present.
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<ByteString>,
    pub user_properties: Vec<UserProperty>,
    pub server_reference: Option<ByteString>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthProperties {
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<ByteString>,
    pub user_properties: Vec<UserProperty>,
}
