//! What the encoder puts on the wire for each version, byte for byte.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use starling_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use starling_codec::*;

fn publish(topic: &'static str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        qos,
        topic: ByteString::from_static(topic),
        packet_id,
        payload: Bytes::from_static(payload),
        ..Default::default()
    }
}

fn with_reason_string() -> AckProperties {
    AckProperties {
        reason_string: Some(ByteString::from_static("no")),
        ..Default::default()
    }
}

#[test]
fn publish_encodes_fixed_header_flags_mqtt_3_3_1() {
    let p = Publish {
        dup: true,
        retain: true,
        ..publish("a/b", QoS::ExactlyOnce, 7, b"hi")
    };
    assert_eq!(
        &enc(&Packet::Publish(p.clone()), V3_1_1)[..],
        b"\x3D\x09\x00\x03a/b\x00\x07hi"
    );
    // MQTT 5 adds an empty property section.
    assert_eq!(
        &enc(&Packet::Publish(p), V5)[..],
        b"\x3D\x0A\x00\x03a/b\x00\x07\x00hi"
    );
    // QoS 0 has no packet identifier.
    let p = publish("t", QoS::AtMostOnce, 0, b"");
    assert_eq!(&enc(&Packet::Publish(p), V3_1_1)[..], b"\x30\x03\x00\x01t");
}

#[test]
fn properties_are_dropped_before_mqtt_5() {
    let mut p = publish("t", QoS::AtMostOnce, 0, b"x");
    let properties = p.properties.make_mut();
    properties.message_expiry_interval = Some(5);
    properties.user_properties.push(("k".into(), "v".into()));
    let packet = Packet::Publish(p);
    assert_eq!(&enc(&packet, V3_1_1)[..], b"\x30\x04\x00\x01tx");
    assert_eq!(&enc(&packet, V3_1)[..], b"\x30\x04\x00\x01tx");
    assert_eq!(
        &enc(&packet, V5)[..],
        b"\x30\x11\x00\x01t\x0C\x02\x00\x00\x00\x05\x26\x00\x01k\x00\x01vx"
    );
}

#[test]
fn acks_5_use_the_short_form_5_0_3_4_2_1() {
    // Success without properties: identifier only, as 3.1.1 and other
    // brokers do.
    let ack = PubAck::new(0x0102);
    for version in VERSIONS {
        assert_eq!(
            &enc(&Packet::PubAck(ack.clone()), version)[..],
            b"\x40\x02\x01\x02"
        );
    }
    // A reason code without properties drops the property length.
    let ack = PubAck {
        code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..PubAck::new(1)
    };
    assert_eq!(
        &enc(&Packet::PubAck(ack.clone()), V5)[..],
        b"\x40\x03\x00\x01\x10"
    );
    // ...and the code is dropped before MQTT 5.
    assert_eq!(&enc(&Packet::PubAck(ack), V3_1_1)[..], b"\x40\x02\x00\x01");
    // Properties force the long form, even for Success.
    let ack = PubAck {
        properties: with_reason_string(),
        ..PubAck::new(1)
    };
    assert_eq!(
        &enc(&Packet::PubComp(ack), V5)[..],
        b"\x70\x09\x00\x01\x00\x05\x1F\x00\x02no"
    );
}

#[test]
fn pubrel_subscribe_unsubscribe_carry_flags_0010_mqtt_3_6_1_1() {
    assert_eq!(enc(&Packet::PubRel(PubAck::new(1)), V3_1_1)[0], 0x62);
    let sub = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![SubscribeFilter {
            filter: "a".into(),
            options: SubscriptionOptions::default(),
        }],
    };
    assert_eq!(enc(&Packet::Subscribe(sub), V3_1_1)[0], 0x82);
    let unsub = Unsubscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec!["a".into()],
    };
    assert_eq!(enc(&Packet::Unsubscribe(unsub), V3_1_1)[0], 0xA2);
}

#[test]
fn subscription_options_before_mqtt_5_are_only_the_qos() {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendIfNew,
    };
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties: SubscribeProperties {
            subscription_identifier: Some(3),
            ..Default::default()
        },
        filters: vec![SubscribeFilter {
            filter: "a".into(),
            options,
        }],
    });
    assert_eq!(&enc(&sub, V3_1_1)[..], b"\x82\x06\x00\x09\x00\x01a\x01");
    assert_eq!(
        &enc(&sub, V5)[..],
        b"\x82\x09\x00\x09\x02\x0B\x03\x00\x01a\x1D"
    );
}

#[test]
fn connack_3_1_1_writes_the_code_as_the_return_code() {
    let ack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode(0),
        properties: ConnAckProperties {
            receive_maximum: Some(10),
            ..Default::default()
        },
    });
    assert_eq!(&enc(&ack, V3_1_1)[..], b"\x20\x02\x01\x00");
    // MQTT 3.1 has no Session Present flag.
    assert_eq!(&enc(&ack, V3_1)[..], b"\x20\x02\x00\x00");
    assert_eq!(&enc(&ack, V5)[..], b"\x20\x06\x01\x00\x03\x21\x00\x0A");
    // The broker maps with to_v3_connack; the encoder writes what it gets.
    let refused = Packet::ConnAck(ConnAck {
        code: ReasonCode(ReasonCode::NOT_AUTHORIZED.to_v3_connack()),
        ..Default::default()
    });
    assert_eq!(&enc(&refused, V3_1_1)[..], b"\x20\x02\x00\x05");
}

#[test]
fn suback_and_unsuback_per_version() {
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: with_reason_string(),
        codes: vec![ReasonCode(1), ReasonCode(0x80)],
    });
    assert_eq!(&enc(&suback, V3_1_1)[..], b"\x90\x04\x00\x01\x01\x80");
    assert_eq!(
        &enc(&suback, V5)[..],
        b"\x90\x0A\x00\x01\x05\x1F\x00\x02no\x01\x80"
    );
    // UNSUBACK has no codes before MQTT 5.
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 1,
        properties: Default::default(),
        codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
    });
    assert_eq!(&enc(&unsuback, V3_1_1)[..], b"\xB0\x02\x00\x01");
    assert_eq!(&enc(&unsuback, V5)[..], b"\xB0\x04\x00\x01\x00\x11");
}

#[test]
fn disconnect_per_version_5_0_3_14_2_1() {
    let normal = Packet::Disconnect(Disconnect::default());
    let with_will = Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE));
    let with_props = Packet::Disconnect(Disconnect {
        code: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    });
    for packet in [&normal, &with_will, &with_props] {
        assert_eq!(&enc(packet, V3_1_1)[..], b"\xE0\x00");
    }
    assert_eq!(&enc(&normal, V5)[..], b"\xE0\x00");
    assert_eq!(&enc(&with_will, V5)[..], b"\xE0\x01\x04");
    assert_eq!(
        &enc(&with_props, V5)[..],
        b"\xE0\x07\x00\x05\x11\x00\x00\x00\x00"
    );
}

#[test]
fn auth_forms_5_0_3_15_2_1() {
    assert_eq!(&enc(&Packet::Auth(Auth::default()), V5)[..], b"\xF0\x00");
    let cont = Packet::Auth(Auth {
        code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Default::default(),
    });
    assert_eq!(&enc(&cont, V5)[..], b"\xF0\x02\x18\x00");
}

#[test]
fn auth_before_mqtt_5_is_not_in_version() {
    for version in [V3_1, V3_1_1] {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            encode(&Packet::Auth(Auth::default()), version, &mut buf),
            Err(EncodeError::NotInVersion {
                packet: "AUTH",
                level: version.level()
            })
        );
        assert_eq!(&buf[..], b"keep");
        assert_eq!(encoded_len(&Packet::Auth(Auth::default()), version), 0);
    }
}

#[test]
fn connect_is_encoded_for_its_own_protocol() {
    let connect = Connect {
        protocol: V3_1,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        will: None,
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties {
            receive_maximum: Some(1),
            ..Default::default()
        },
    };
    let expected = b"\x10\x15\x00\x06MQIsdp\x03\xC2\x00\x0A\x00\x01c\x00\x01u\x00\x01p";
    // Whatever the connection's version, the packet says which it is.
    for version in VERSIONS {
        let packet = Packet::Connect(Box::new(connect.clone()));
        assert_eq!(&enc(&packet, version)[..], expected);
    }
    let v5 = Packet::Connect(Box::new(Connect {
        protocol: V5,
        will: Some(LastWill {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(3),
                ..Default::default()
            },
        }),
        ..connect
    }));
    assert_eq!(
        &enc(&v5, V3_1_1)[..],
        &b"\x10\x25\x00\x04MQTT\x05\xEE\x00\x0A\x03\x21\x00\x01\x00\x01c\x05\x18\x00\x00\x00\x03\x00\x01w\x00\x03bye\x00\x01u\x00\x01p"[..]
    );
}

#[test]
fn strings_over_65535_bytes_are_too_long() {
    let long: ByteString = "x".repeat(65_536).into();
    let fits: ByteString = "x".repeat(65_535).into();

    let p = |topic: ByteString| {
        Packet::Publish(Publish {
            topic,
            ..Default::default()
        })
    };
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&p(long.clone()), V3_1_1, &mut buf),
        Err(EncodeError::TooLong("topic name"))
    );
    assert!(buf.is_empty());
    assert_eq!(encoded_len(&p(long.clone()), V3_1_1), 0);
    assert_eq!(enc(&p(fits), V3_1_1).len(), 1 + 3 + 2 + 65_535);

    let mut ack = PubAck::new(1);
    ack.properties
        .user_properties
        .push(("k".into(), long.clone()));
    assert!(matches!(
        encode(&Packet::PubAck(ack.clone()), V5, &mut buf),
        Err(EncodeError::TooLong(_))
    ));
    // Before MQTT 5 the property is not sent, so it cannot be too long.
    assert_eq!(enc(&Packet::PubAck(ack), V3_1_1).len(), 4);

    let connect = Connect {
        protocol: V3_1_1,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: Some("u".into()),
        password: Some(Bytes::from(vec![0u8; 65_536])),
        properties: Default::default(),
    };
    assert_eq!(
        encode(&Packet::Connect(Box::new(connect)), V3_1_1, &mut buf),
        Err(EncodeError::TooLong("password"))
    );
    assert!(buf.is_empty());
}

#[test]
fn remaining_length_over_268_435_455_is_too_long() {
    // Zeroed memory that is never touched: only its length is read.
    let payload = Bytes::from(vec![0u8; 268_435_455 - 3]);
    let p = Publish {
        topic: "t".into(),
        payload,
        ..Default::default()
    };
    assert_eq!(
        encoded_len(&Packet::Publish(p.clone()), V3_1_1),
        5 + 268_435_455
    );
    let mut p = p;
    p.payload = Bytes::from(vec![0u8; 268_435_455 - 2]);
    let mut buf = BytesMut::new();
    assert_eq!(
        encode_publish(&p.as_ref(), V3_1_1, &mut buf),
        Err(EncodeError::TooLong("packet"))
    );
    assert_eq!(publish_encoded_len(&p.as_ref(), V3_1_1), 0);
    assert_eq!(
        encode(&Packet::Publish(p), V3_1_1, &mut buf),
        Err(EncodeError::TooLong("packet"))
    );
    assert!(buf.is_empty());
}

#[test]
fn encode_reserves_exactly_once() {
    let mut p = publish("sensors/1/temp", QoS::AtLeastOnce, 3, b"21.5");
    p.properties
        .make_mut()
        .user_properties
        .push(("unit".into(), "C".into()));
    let ack = PubAck {
        properties: with_reason_string(),
        ..PubAck::new(3)
    };
    // (At least 8 bytes each: below that `Vec` rounds a reservation up.)
    for packet in [Packet::Publish(p), Packet::PubAck(ack)] {
        let mut buf = BytesMut::new();
        encode(&packet, V5, &mut buf).unwrap();
        // A single reservation of the exact size leaves no spare capacity;
        // growing while writing would have.
        assert_eq!(buf.capacity(), buf.len(), "{packet:?}");
    }
}

#[test]
fn encode_appends_to_what_is_already_buffered() {
    let mut buf = BytesMut::from(&b"\xC0\x00"[..]);
    encode(&Packet::PingResp, V5, &mut buf).unwrap();
    assert_eq!(&buf[..], b"\xC0\x00\xD0\x00");
}
