//! Messages on the wire between nodes (`ForwardedMessage`) and back.

use std::time::Instant;

use starling_codec::{ByteString, PublishProperties, QoS};
use starling_proto::v1::{ForwardedMessage, UserProperty};

use crate::message::Message;

pub fn to_wire(message: &Message, now: Instant) -> ForwardedMessage {
    let p = &message.properties;
    ForwardedMessage {
        topic: message.topic.to_string(),
        payload: message.payload.clone(),
        qos: u32::from(message.qos.as_u8()),
        retain: message.retain,
        payload_format_indicator: p.payload_format_indicator.map(u32::from),
        message_expiry_interval: message.remaining_expiry(now),
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| UserProperty {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        shared_groups: Vec::new(),
        plain: true,
    }
}

/// The message a peer sent, or `None` when it is not a valid message.
pub fn from_wire(wire: ForwardedMessage) -> Option<Message> {
    let qos = QoS::from_u8(u8::try_from(wire.qos).ok()?)?;
    let properties = PublishProperties {
        payload_format_indicator: wire
            .payload_format_indicator
            .and_then(|v| u8::try_from(v).ok()),
        message_expiry_interval: wire.message_expiry_interval,
        content_type: wire.content_type.map(ByteString::from),
        response_topic: wire.response_topic.map(ByteString::from),
        correlation_data: wire.correlation_data,
        user_properties: wire
            .user_properties
            .into_iter()
            .map(|p| (ByteString::from(p.key), ByteString::from(p.value)))
            .collect(),
        ..PublishProperties::default()
    };
    Some(Message::new(
        ByteString::from(wire.topic),
        wire.payload,
        qos,
        wire.retain,
        properties,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn round_trip_keeps_what_subscribers_see() {
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/me".into()),
            correlation_data: Some(Bytes::from_static(b"id-7")),
            user_properties: vec![("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        let original = Message::new(
            "a/b".into(),
            Bytes::from_static(b"hi"),
            QoS::ExactlyOnce,
            true,
            properties,
            None,
        );
        let back = from_wire(to_wire(&original, Instant::now())).unwrap();
        assert_eq!(back.topic, original.topic);
        assert_eq!(back.payload, original.payload);
        assert_eq!(back.qos, QoS::ExactlyOnce);
        assert!(back.retain);
        assert_eq!(
            back.properties.user_properties,
            original.properties.user_properties
        );
        assert_eq!(
            back.properties.correlation_data,
            original.properties.correlation_data
        );
        assert!(
            back.properties
                .message_expiry_interval
                .is_some_and(|s| (59..=60).contains(&s))
        );
    }
}
