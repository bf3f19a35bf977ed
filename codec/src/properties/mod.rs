//! MQTT 5 properties, one struct per packet kind.
//!
//! Each struct holds exactly the properties its packet may carry (MQTT 5.0
//! section 2.2.2.2); the decoder rejects any other property identifier and
//! any property that appears twice where the specification forbids it.
//!
//! How a property section is read and written: [`section`].

pub(crate) mod section;

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

/// A PUBLISH's properties, boxed, and only when it has any. Most
/// publishes have none, and a publish is moved several times between the
/// socket and the subscribers (as a `Packet`, a `Publish`, then inside the
/// broker's message): 168 bytes of empty fields inline made a `Publish`
/// 232 bytes, now 80. Reads see the properties through `Deref`,
/// empty ones when there are none; writes go through
/// [`make_mut`](Self::make_mut), which boxes them.
#[derive(Clone, Default)]
pub struct MessageProperties(Option<Box<PublishProperties>>);

/// What an empty [`MessageProperties`] reads as. Aligned to cache lines of
/// its own: read for every publish, it must not share one with data that
/// changes (a counter written per message sat next to it once, and every
/// read missed).
static NO_PROPERTIES: CacheLines<PublishProperties> = CacheLines(PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
});

#[repr(align(128))]
struct CacheLines<T>(T);

impl MessageProperties {
    /// The properties to write to, boxed first if there were none.
    pub fn make_mut(&mut self) -> &mut PublishProperties {
        self.0.get_or_insert_with(Box::default)
    }

    /// Whether the properties are held out of line: there were some.
    pub fn is_boxed(&self) -> bool {
        self.0.is_some()
    }

    /// The properties held out of line, `None` when there are none.
    pub fn boxed(&self) -> Option<&PublishProperties> {
        self.0.as_deref()
    }

    /// Lets go of the box if what it holds became empty.
    pub fn shrink(&mut self) {
        if self.0.as_deref().is_some_and(is_empty) {
            self.0 = None;
        }
    }
}

impl std::ops::Deref for MessageProperties {
    type Target = PublishProperties;

    fn deref(&self) -> &PublishProperties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES.0)
    }
}

impl From<PublishProperties> for MessageProperties {
    fn from(properties: PublishProperties) -> Self {
        MessageProperties((!is_empty(&properties)).then(|| Box::new(properties)))
    }
}

/// Equal when they read the same, boxed or not.
impl PartialEq for MessageProperties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for MessageProperties {}

impl std::fmt::Debug for MessageProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        PublishProperties::fmt(self, f)
    }
}

/// Stored (in session snapshots) as the properties themselves.
impl Serialize for MessageProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PublishProperties::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for MessageProperties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PublishProperties::deserialize(d).map(MessageProperties::from)
    }
}

/// No property present. Destructured on purpose: a field added to
/// [`PublishProperties`] fails to compile here instead of being missed.
fn is_empty(properties: &PublishProperties) -> bool {
    let PublishProperties {
        payload_format_indicator,
        message_expiry_interval,
        topic_alias,
        response_topic,
        correlation_data,
        user_properties,
        subscription_identifiers,
        content_type,
    } = properties;
    payload_format_indicator.is_none()
        && message_expiry_interval.is_none()
        && topic_alias.is_none()
        && response_topic.is_none()
        && correlation_data.is_none()
        && user_properties.is_empty()
        && subscription_identifiers.is_empty()
        && content_type.is_none()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Packet, ProtocolVersion, Publish, QoS};

    #[test]
    fn publish_properties_are_boxed_only_when_written_or_present() {
        let mut none = MessageProperties::default();
        assert!(!none.is_boxed());
        assert!(none.boxed().is_none());
        assert_eq!(*none, PublishProperties::default());

        none.make_mut().topic_alias = Some(3);
        assert!(none.is_boxed());
        assert_eq!(none.boxed().and_then(|p| p.topic_alias), Some(3));
        assert_eq!(none.topic_alias, Some(3));

        // Emptied again: the box goes, and it equals the unboxed empty.
        none.make_mut().topic_alias = None;
        assert_eq!(none, MessageProperties::default());
        none.shrink();
        assert!(!none.is_boxed());
    }

    /// The decoder boxes a PUBLISH's properties only when it carries some,
    /// and a round trip keeps them.
    #[test]
    fn decoded_publishes_box_only_present_properties() {
        let decode_again = |publish: Publish| {
            let mut buf = bytes::BytesMut::new();
            crate::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut buf)
                .expect("encodes");
            match crate::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
                Ok(Some(Packet::Publish(publish))) => publish,
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        };
        let plain = Publish {
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            packet_id: 1,
            ..Publish::default()
        };
        assert!(!decode_again(plain.clone()).properties.is_boxed());

        let mut typed = plain;
        typed.properties.make_mut().content_type = Some("text/plain".into());
        let back = decode_again(typed.clone());
        assert!(back.properties.is_boxed());
        assert_eq!(back, typed);
    }
}
