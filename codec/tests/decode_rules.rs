//! One test per normative statement the decoder enforces, named after the
//! statement (MQTT 3.1.1 "MQTT-x.y.z-n", MQTT 5.0 section numbers or
//! "MQTT-x.y.z-n" of the 5.0 document). Packet bodies are byte literals;
//! `frame` only adds the fixed header so the remaining length is right.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use starling_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use starling_codec::*;

/// The fixed header `first` + remaining length, then `body`.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

fn connect311(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &[b"\x00\x04MQTT\x04", &[flags, 0x00, 0x3C][..], payload].concat(),
    )
}

fn connect5(flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &[
            b"\x00\x04MQTT\x05",
            &[flags, 0x00, 0x3C][..],
            props,
            payload,
        ]
        .concat(),
    )
}

fn publish5(props_and_payload: &[u8]) -> Vec<u8> {
    frame(0x30, &[b"\x00\x01a", props_and_payload].concat())
}

fn connack5(props: &[u8]) -> Vec<u8> {
    frame(0x20, &[b"\x00\x00", props].concat())
}

fn connect_of(packet: Packet) -> Connect {
    match packet {
        Packet::Connect(c) => *c,
        other => panic!("not a CONNECT: {other:?}"),
    }
}

fn publish_of(packet: Packet) -> Publish {
    match packet {
        Packet::Publish(p) => p,
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Framing: remaining length and packet size (3.1.1 section 2.2.3, 5.0 1.5.5
// and 2.1.4)
// ---------------------------------------------------------------------------

#[test]
fn incomplete_input_is_none_and_consumes_nothing() {
    for version in VERSIONS {
        assert_eq!(dec(b"", version), Ok(None));
        assert_eq!(dec(b"\x30", version), Ok(None));
        assert_eq!(dec(b"\x30\xFF\xFF", version), Ok(None));
        assert_eq!(dec(b"\x30\x05\x00\x01a", version), Ok(None));
    }
}

#[test]
fn remaining_length_of_more_than_4_bytes_is_malformed_5_0_1_5_5() {
    for version in VERSIONS {
        // Detected on the fourth byte already, without waiting for a fifth.
        assert!(is_malformed(&err(b"\x30\xFF\xFF\xFF\xFF", version)));
        assert!(is_malformed(&err(b"\x30\x80\x80\x80\x80\x01", version)));
    }
}

#[test]
fn remaining_length_need_not_be_minimal() {
    assert_eq!(dec(b"\xC0\x80\x00", V3_1_1), Ok(Some(Packet::PingReq)));
    assert_eq!(dec(b"\xC0\x80\x80\x80\x00", V5), Ok(Some(Packet::PingReq)));
}

#[test]
fn read_remaining_length_reports_value_and_width() {
    assert_eq!(read_remaining_length(b""), Ok(None));
    assert_eq!(read_remaining_length(b"\x30"), Ok(None));
    assert_eq!(read_remaining_length(b"\x30\x00"), Ok(Some((0, 1))));
    assert_eq!(read_remaining_length(b"\x30\xC1\x02"), Ok(Some((321, 2))));
    assert_eq!(
        read_remaining_length(b"\x30\xFF\xFF\xFF\x7F"),
        Ok(Some((268_435_455, 4)))
    );
    assert_eq!(read_remaining_length(b"\x30\xFF\xFF\xFF"), Ok(None));
    assert!(read_remaining_length(b"\x30\xFF\xFF\xFF\xFF").is_err());
    assert_eq!(fixed_header_len(0), 2);
    assert_eq!(fixed_header_len(127), 2);
    assert_eq!(fixed_header_len(128), 3);
    assert_eq!(fixed_header_len(268_435_455), 5);
}

#[test]
fn max_packet_size_is_checked_on_the_fixed_header_alone_mqtt_3_1_2_24() {
    // Only the fixed header has arrived; it announces the largest packet.
    let mut buf = BytesMut::from(&b"\x30\xFF\xFF\xFF\x7F"[..]);
    let capacity = buf.capacity();
    assert_eq!(
        decode(&mut buf, V5, 1_000_000),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1_000_000
        })
    );
    // Within the limit the decoder waits, and reserves nothing on the
    // peer's word.
    let mut buf = BytesMut::from(&b"\x30\xFF\xFF\xFF\x7F"[..]);
    assert_eq!(decode(&mut buf, V5, usize::MAX), Ok(None));
    assert_eq!(buf.capacity(), capacity);
}

#[test]
fn max_packet_size_counts_the_fixed_header() {
    let mut buf = BytesMut::from(&b"\xC0\x00"[..]);
    assert_eq!(
        decode(&mut buf, V3_1_1, 1),
        Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
    );
    let mut buf = BytesMut::from(&b"\xC0\x00"[..]);
    assert_eq!(decode(&mut buf, V3_1_1, 2), Ok(Some(Packet::PingReq)));
}

#[test]
fn two_packets_in_one_buffer_come_out_one_by_one() {
    let mut buf = BytesMut::from(&b"\xC0\x00\xD0\x00\x30"[..]);
    assert_eq!(decode(&mut buf, V5, 100), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V5, 100), Ok(Some(Packet::PingResp)));
    assert_eq!(decode(&mut buf, V5, 100), Ok(None));
    assert_eq!(&buf[..], b"\x30");
}

#[test]
fn declared_body_with_missing_or_leftover_bytes_is_malformed() {
    // PUBACK whose remaining length covers one byte of the identifier.
    assert!(is_malformed(&err(b"\x40\x01\x00", V3_1_1)));
    // PUBACK with a byte after the identifier (3.1.1 has no reason code).
    assert!(is_malformed(&err(b"\x40\x03\x00\x01\x00", V3_1_1)));
}

// ---------------------------------------------------------------------------
// Fixed header flags (3.1.1 MQTT-2.2.2-1/2, 5.0 MQTT-2.1.3-1)
// ---------------------------------------------------------------------------

#[test]
fn packet_type_0_is_reserved() {
    for version in VERSIONS {
        assert!(is_malformed(&err(b"\x00\x00", version)));
    }
}

#[test]
fn reserved_flags_must_be_zero_mqtt_2_2_2_1() {
    for ty in [1u8, 2, 4, 5, 7, 9, 11, 12, 13, 14] {
        for flag in [0x01u8, 0x02, 0x04, 0x08] {
            for version in VERSIONS {
                // The first byte alone is enough to fail.
                let e = err(&[ty << 4 | flag], version);
                assert!(is_malformed(&e), "type {ty} flags {flag:04b}: {e:?}");
            }
        }
    }
    assert!(is_malformed(&err(b"\xF1\x00", V5)));
}

#[test]
fn pubrel_subscribe_unsubscribe_need_flags_0010_mqtt_3_6_1_1_mqtt_3_8_1_1_mqtt_3_10_1_1() {
    for ty in [6u8, 8, 10] {
        for flags in [0b0000u8, 0b0001, 0b0011, 0b0110, 0b1010] {
            for version in [V3_1_1, V5] {
                assert!(
                    is_malformed(&err(&[ty << 4 | flags], version)),
                    "type {ty} flags {flags:04b}"
                );
            }
        }
    }
    assert_eq!(
        dec(&frame(0x62, b"\x00\x01"), V3_1_1),
        Ok(Some(Packet::PubRel(PubAck::new(1))))
    );
}

#[test]
fn mqtt_3_1_tolerates_dup_on_pubrel_subscribe_unsubscribe_retransmissions() {
    assert_eq!(
        dec(&frame(0x6A, b"\x00\x01"), V3_1),
        Ok(Some(Packet::PubRel(PubAck::new(1))))
    );
    assert!(matches!(
        dec(&frame(0x8A, b"\x00\x01\x00\x01a\x00"), V3_1),
        Ok(Some(Packet::Subscribe(_)))
    ));
}

#[test]
fn publish_qos_3_is_malformed_mqtt_3_3_1_4() {
    for version in VERSIONS {
        assert!(is_malformed(&err(b"\x36", version)));
        assert!(is_malformed(&err(
            &frame(0x36, b"\x00\x01a\x00\x01"),
            version
        )));
    }
}

#[test]
fn publish_dup_with_qos_0_is_malformed_mqtt_3_3_1_2() {
    for version in VERSIONS {
        assert!(is_malformed(&err(&frame(0x38, b"\x00\x01a"), version)));
    }
}

#[test]
fn auth_does_not_exist_before_mqtt_5() {
    assert!(is_malformed(&err(b"\xF0\x00", V3_1_1)));
    assert!(is_malformed(&err(b"\xF0\x00", V3_1)));
}

// ---------------------------------------------------------------------------
// UTF-8 strings (3.1.1 MQTT-1.5.3-1/2, 5.0 MQTT-1.5.4-1/2)
// ---------------------------------------------------------------------------

#[test]
fn ill_formed_utf8_is_malformed_mqtt_1_5_4_1() {
    // Client identifier 0xFF.
    assert!(is_malformed(&err(
        &connect311(0x02, b"\x00\x01\xFF"),
        V3_1_1
    )));
    // An encoded surrogate U+D800.
    assert!(is_malformed(&err(
        &connect311(0x02, b"\x00\x03\xED\xA0\x80"),
        V3_1_1
    )));
    // Topic filter.
    assert!(is_malformed(&err(
        &frame(0x82, b"\x00\x01\x00\x01\xC3\x00"),
        V3_1_1
    )));
    // User Property in MQTT 5.
    assert!(is_malformed(&err(
        &publish5(b"\x07\x26\x00\x01\xFF\x00\x01v"),
        V5
    )));
}

#[test]
fn u_0000_in_a_string_is_malformed_mqtt_1_5_4_2() {
    assert!(is_malformed(&err(
        &connect311(0x02, b"\x00\x02a\x00"),
        V3_1_1
    )));
    assert!(is_malformed(&err(&frame(0x30, b"\x00\x02a\x00"), V3_1_1)));
    assert!(is_malformed(&err(
        &frame(0xA2, b"\x00\x01\x00\x02\x00a"),
        V3_1_1
    )));
}

#[test]
fn strings_and_payloads_are_slices_of_the_packet() {
    let wire = Bytes::from(connect311(0xC2, b"\x00\x02id\x00\x04user\x00\x02pw"));
    let mut buf = BytesMut::from(&wire[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let c = connect_of(decode(&mut buf, V5, usize::MAX).unwrap().unwrap());
    for ptr in [
        c.client_id.as_ptr(),
        c.username.as_ref().unwrap().as_ptr(),
        c.password.as_ref().unwrap().as_ptr(),
    ] {
        assert!((start..end).contains(&(ptr as usize)));
    }
}

// ---------------------------------------------------------------------------
// CONNECT (section 3.1)
// ---------------------------------------------------------------------------

#[test]
fn connect_3_1_1_decodes() {
    let c = connect_of(ok(&connect311(0x02, b"\x00\x03abc"), V5));
    assert_eq!(c.protocol, V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(&*c.client_id, "abc");
    assert_eq!((c.will, c.username, c.password), (None, None, None));
}

#[test]
fn connect_3_1_uses_mqisdp_level_3() {
    let wire = frame(0x10, b"\x00\x06MQIsdp\x03\x00\x00\x0A\x00\x01x");
    let c = connect_of(ok(&wire, V5));
    assert_eq!(c.protocol, V3_1);
    assert!(!c.clean_start);
}

#[test]
fn connect_3_1_flags_without_user_name_or_password_mean_none() {
    // User name and password flags set, the payload ends after the id.
    let wire = frame(0x10, b"\x00\x06MQIsdp\x03\xC2\x00\x0A\x00\x01x");
    let c = connect_of(ok(&wire, V5));
    assert_eq!((c.username, c.password), (None, None));
    // A user name but no password.
    let wire = frame(0x10, b"\x00\x06MQIsdp\x03\xC2\x00\x0A\x00\x01x\x00\x01u");
    let c = connect_of(ok(&wire, V5));
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password, None);
    // 3.1.1 stays strict (MQTT-3.1.2-19).
    let wire = frame(0x10, b"\x00\x04MQTT\x04\xC2\x00\x0A\x00\x01x");
    assert!(matches!(err(&wire, V5), DecodeError::Malformed(_)));
}

#[test]
fn connect_is_decoded_by_the_level_it_announces() {
    // A v5 CONNECT on a connection whose version is not known yet.
    let wire = connect5(0x02, b"\x05\x11\x00\x00\x00\x0A", b"\x00\x00");
    for version in VERSIONS {
        let c = connect_of(ok(&wire, version));
        assert_eq!(c.protocol, V5);
        assert_eq!(c.properties.session_expiry_interval, Some(10));
    }
}

#[test]
fn wrong_protocol_name_is_a_protocol_error_mqtt_3_1_2_1() {
    let wire = frame(0x10, b"\x00\x04MQTX\x04\x02\x00\x3C\x00\x00");
    assert!(is_protocol(&err(&wire, V3_1_1)));
}

#[test]
fn a_level_under_the_other_versions_name_is_unsupported_mqtt_3_1_2_2() {
    let wire = frame(0x10, b"\x00\x04MQTT\x03\x02\x00\x3C\x00\x00");
    assert_eq!(
        err(&wire, V3_1_1),
        DecodeError::UnsupportedProtocolVersion(3)
    );
    let wire = frame(0x10, b"\x00\x06MQIsdp\x04\x02\x00\x3C\x00\x00");
    assert_eq!(
        err(&wire, V3_1_1),
        DecodeError::UnsupportedProtocolVersion(4)
    );
}

#[test]
fn unknown_protocol_level_is_unsupported_mqtt_3_1_2_2() {
    let wire = frame(0x10, b"\x00\x04MQTT\x06\x02\x00\x3C\x00\x00");
    assert_eq!(
        err(&wire, V3_1_1),
        DecodeError::UnsupportedProtocolVersion(6)
    );
    assert_eq!(
        err(&wire, V3_1_1).reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
}

#[test]
fn connect_reserved_flag_must_be_zero_mqtt_3_1_2_3() {
    assert!(is_malformed(&err(&connect311(0x03, b"\x00\x00"), V3_1_1)));
    assert!(is_malformed(&err(
        &connect5(0x03, b"\x00", b"\x00\x00"),
        V5
    )));
}

#[test]
fn will_qos_3_is_malformed_mqtt_3_1_2_14() {
    // Will flag with QoS bits 11.
    let payload = b"\x00\x01c\x00\x01t\x00\x01m";
    assert!(is_malformed(&err(&connect311(0x1E, payload), V3_1_1)));
    // 5.0 MQTT-3.1.2-12.
    assert!(is_malformed(&err(
        &connect5(0x1E, b"\x00", b"\x00\x01c\x00\x00\x01t\x00\x01m"),
        V5
    )));
}

#[test]
fn will_qos_and_retain_need_the_will_flag_mqtt_3_1_2_13_and_15() {
    assert!(is_malformed(&err(&connect311(0x0A, b"\x00\x01c"), V3_1_1)));
    assert!(is_malformed(&err(&connect311(0x22, b"\x00\x01c"), V3_1_1)));
    // 5.0 MQTT-3.1.2-11 and MQTT-3.1.2-13.
    assert!(is_malformed(&err(
        &connect5(0x12, b"\x00", b"\x00\x01c"),
        V5
    )));
    assert!(is_malformed(&err(
        &connect5(0x22, b"\x00", b"\x00\x01c"),
        V5
    )));
}

#[test]
fn will_is_read_in_payload_order() {
    // Will QoS 1, retain, then user name and password.
    let c = connect_of(ok(
        &connect311(0xF6, b"\x00\x01c\x00\x03a/b\x00\x02hi\x00\x01u\x00\x01p"),
        V3_1_1,
    ));
    let will = c.will.unwrap();
    assert_eq!(&*will.topic, "a/b");
    assert_eq!(&will.payload[..], b"hi");
    assert_eq!(will.qos, QoS::ExactlyOnce);
    assert!(will.retain);
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn will_topic_must_be_a_topic_name_mqtt_3_3_2_2() {
    let wire = connect311(0x06, b"\x00\x01c\x00\x03a/#\x00\x00");
    assert!(matches!(
        err(&wire, V3_1_1),
        DecodeError::TopicNameInvalid(_)
    ));
}

#[test]
fn password_without_user_name_is_malformed_before_5_mqtt_3_1_2_22() {
    let wire = connect311(0x42, b"\x00\x01c\x00\x02pw");
    assert!(is_malformed(&err(&wire, V3_1_1)));
    // MQTT 5 allows it (3.1.2.9).
    let c = connect_of(ok(&connect5(0x42, b"\x00", b"\x00\x01c\x00\x02pw"), V5));
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_with_missing_flagged_field_is_malformed() {
    // User name flag, no user name.
    assert!(is_malformed(&err(&connect311(0x82, b"\x00\x01c"), V3_1_1)));
}

#[test]
fn connect_with_trailing_bytes_is_malformed() {
    assert!(is_malformed(&err(
        &connect311(0x02, b"\x00\x01c\x00"),
        V3_1_1
    )));
}

#[test]
fn connect_5_properties_decode() {
    let props = b"\x1B\x11\x00\x00\x00\x3C\x21\x00\x0A\x27\x00\x00\x10\x00\x22\x00\x05\x19\x01\x17\x00\x26\x00\x01k\x00\x01v";
    let c = connect_of(ok(&connect5(0x02, props, b"\x00\x00"), V5));
    let p = c.properties;
    assert_eq!(p.session_expiry_interval, Some(60));
    assert_eq!(p.receive_maximum, Some(10));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert_eq!(p.request_response_information, Some(true));
    assert_eq!(p.request_problem_information, Some(false));
    assert_eq!(p.user_properties.len(), 1);
}

#[test]
fn receive_maximum_0_is_a_protocol_error_5_0_3_1_2_11_3() {
    let wire = connect5(0x02, b"\x03\x21\x00\x00", b"\x00\x00");
    assert!(is_protocol(&err(&wire, V5)));
    assert!(is_protocol(&err(&connack5(b"\x03\x21\x00\x00"), V5)));
}

#[test]
fn maximum_packet_size_0_is_a_protocol_error_5_0_3_1_2_11_4() {
    let wire = connect5(0x02, b"\x05\x27\x00\x00\x00\x00", b"\x00\x00");
    assert!(is_protocol(&err(&wire, V5)));
    assert!(is_protocol(&err(
        &connack5(b"\x05\x27\x00\x00\x00\x00"),
        V5
    )));
}

#[test]
fn request_information_flags_must_be_0_or_1_5_0_3_1_2_11_6_and_7() {
    for id in [0x17u8, 0x19] {
        let wire = connect5(0x02, &[0x02, id, 0x02], b"\x00\x00");
        assert!(is_protocol(&err(&wire, V5)));
    }
}

#[test]
fn authentication_data_needs_a_method_5_0_3_1_2_11_10() {
    let wire = connect5(0x02, b"\x04\x16\x00\x01x", b"\x00\x00");
    assert!(is_protocol(&err(&wire, V5)));
    let wire = connect5(0x02, b"\x08\x15\x00\x01m\x16\x00\x01x", b"\x00\x00");
    ok(&wire, V5);
}

#[test]
fn will_properties_are_checked_5_0_3_1_3_2() {
    // Payload Format Indicator 1 on a Will Payload that is not UTF-8.
    let wire = connect5(0x06, b"\x00", b"\x00\x01c\x02\x01\x01\x00\x01t\x00\x01\xFF");
    assert_eq!(err(&wire, V5), DecodeError::PayloadFormatInvalid);
    // Payload Format Indicator 2.
    let wire = connect5(0x06, b"\x00", b"\x00\x01c\x02\x01\x02\x00\x01t\x00\x00");
    assert!(is_protocol(&err(&wire, V5)));
    // Response Topic with a wildcard.
    let wire = connect5(
        0x06,
        b"\x00",
        b"\x00\x01c\x04\x08\x00\x01+\x00\x01t\x00\x00",
    );
    assert!(is_protocol(&err(&wire, V5)));
    // A CONNECT-only property inside the Will Properties.
    let wire = connect5(0x06, b"\x00", b"\x00\x01c\x03\x21\x00\x01\x00\x01t\x00\x00");
    assert!(is_malformed(&err(&wire, V5)));
}

// ---------------------------------------------------------------------------
// Properties in general (5.0 section 2.2.2)
// ---------------------------------------------------------------------------

#[test]
fn property_not_allowed_in_the_packet_is_malformed_5_0_2_2_2_2() {
    // Session Expiry Interval in PUBLISH.
    assert!(is_malformed(&err(
        &publish5(b"\x05\x11\x00\x00\x00\x01"),
        V5
    )));
    // Topic Alias in CONNECT.
    let wire = connect5(0x02, b"\x03\x23\x00\x01", b"\x00\x00");
    assert!(is_malformed(&err(&wire, V5)));
    // An identifier no table defines, and one with the high bit set.
    assert!(is_malformed(&err(&publish5(b"\x02\x7F\x00"), V5)));
    assert!(is_malformed(&err(&publish5(b"\x03\x81\x01\x00"), V5)));
}

#[test]
fn property_twice_is_a_protocol_error_5_0_2_2_2_2() {
    let wire = publish5(b"\x0A\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02");
    assert!(is_protocol(&err(&wire, V5)));
    let wire = connect5(0x02, b"\x0A\x11\0\0\0\x01\x11\0\0\0\x02", b"\x00\x00");
    assert!(is_protocol(&err(&wire, V5)));
    let wire = frame(0x40, b"\x00\x01\x00\x08\x1F\x00\x01a\x1F\x00\x01b");
    assert!(is_protocol(&err(&wire, V5)));
}

#[test]
fn user_property_may_repeat_and_keeps_order_5_0_3_3_2_3_7() {
    let p = publish_of(ok(
        &publish5(b"\x0E\x26\x00\x01k\x00\x01v\x26\x00\x01k\x00\x01w"),
        V5,
    ));
    let pairs: Vec<(&str, &str)> = p
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(pairs, [("k", "v"), ("k", "w")]);
}

#[test]
fn properties_overrunning_the_packet_are_malformed() {
    // Property length 5, two bytes left.
    assert!(is_malformed(&err(&publish5(b"\x05\x02\x00"), V5)));
    // Property length 2, but the property needs 5: it would eat the payload.
    assert!(is_malformed(&err(
        &publish5(b"\x02\x02\x00\x00\x00\x01xyz"),
        V5
    )));
    // A property length that is itself a 5-byte Variable Byte Integer.
    assert!(is_malformed(&err(&publish5(b"\xFF\xFF\xFF\xFF\x01"), V5)));
}

// ---------------------------------------------------------------------------
// CONNACK (section 3.2)
// ---------------------------------------------------------------------------

#[test]
fn connack_3_1_1_keeps_the_return_code() {
    for code in 0..=5u8 {
        let packet = ok(&frame(0x20, &[0x00, code]), V3_1_1);
        assert_eq!(
            packet,
            Packet::ConnAck(ConnAck {
                code: ReasonCode(code),
                ..Default::default()
            })
        );
    }
    assert!(matches!(
        ok(b"\x20\x02\x01\x00", V3_1_1),
        Packet::ConnAck(ConnAck {
            session_present: true,
            ..
        })
    ));
}

#[test]
fn connack_3_1_1_return_codes_above_5_are_reserved() {
    assert!(is_protocol(&err(b"\x20\x02\x00\x06", V3_1_1)));
    // Before MQTT 5 a v5 reason code is just an unknown return code.
    assert!(is_protocol(&err(b"\x20\x02\x00\x80", V3_1_1)));
}

#[test]
fn connack_reserved_flags_are_malformed_3_2_2_1() {
    assert!(is_malformed(&err(b"\x20\x02\x02\x00", V3_1_1)));
    assert!(is_malformed(&err(b"\x20\x03\x80\x00\x00", V5)));
}

#[test]
fn connack_3_1_first_byte_is_unused() {
    assert_eq!(
        ok(b"\x20\x02\x01\x00", V3_1),
        Packet::ConnAck(ConnAck::default())
    );
}

#[test]
fn session_present_with_refusal_is_a_protocol_error_mqtt_3_2_2_4() {
    assert!(is_protocol(&err(b"\x20\x02\x01\x05", V3_1_1)));
    // 5.0 MQTT-3.2.2-6.
    assert!(is_protocol(&err(b"\x20\x03\x01\x87\x00", V5)));
}

#[test]
fn connack_5_needs_its_property_length() {
    assert!(is_malformed(&err(b"\x20\x02\x00\x00", V5)));
    assert_eq!(
        ok(b"\x20\x03\x00\x00\x00", V5),
        Packet::ConnAck(ConnAck::default())
    );
}

#[test]
fn connack_5_reason_code_must_be_a_connack_one_5_0_3_2_2_2() {
    assert!(is_protocol(&err(b"\x20\x03\x00\x10\x00", V5)));
    ok(b"\x20\x03\x00\x9F\x00", V5);
}

#[test]
fn connack_5_properties_decode() {
    let props = b"\x10\x24\x01\x25\x00\x28\x01\x29\x00\x2A\x01\x13\x00\x1E\x21\x00\x07";
    let Packet::ConnAck(c) = ok(&connack5(props), V5) else {
        panic!()
    };
    assert_eq!(c.properties.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(c.properties.retain_available, Some(false));
    assert_eq!(c.properties.wildcard_subscription_available, Some(true));
    assert_eq!(c.properties.subscription_identifiers_available, Some(false));
    assert_eq!(c.properties.shared_subscription_available, Some(true));
    assert_eq!(c.properties.server_keep_alive, Some(30));
}

#[test]
fn maximum_qos_must_be_0_or_1_5_0_3_2_2_3_4() {
    assert!(is_protocol(&err(&connack5(b"\x02\x24\x02"), V5)));
}

#[test]
fn availability_flags_must_be_0_or_1_5_0_3_2_2_3() {
    for id in [0x25u8, 0x28, 0x29, 0x2A] {
        assert!(
            is_protocol(&err(&connack5(&[0x02, id, 0x02]), V5)),
            "{id:#x}"
        );
    }
}

// ---------------------------------------------------------------------------
// PUBLISH (section 3.3)
// ---------------------------------------------------------------------------

#[test]
fn publish_3_1_1_decodes_zero_copy() {
    let wire = frame(0x33, b"\x00\x03a/b\x00\x07hello");
    let mut buf = BytesMut::from(&wire[..]);
    let start = buf.as_ptr() as usize;
    let p = publish_of(decode(&mut buf, V3_1_1, usize::MAX).unwrap().unwrap());
    assert_eq!(
        (p.dup, p.qos, p.retain, &*p.topic, p.packet_id),
        (false, QoS::AtLeastOnce, true, "a/b", 7)
    );
    assert_eq!(&p.payload[..], b"hello");
    assert_eq!(p.topic.as_ptr() as usize, start + 4);
    assert_eq!(p.payload.as_ptr() as usize, start + 9);
}

#[test]
fn topic_name_with_wildcards_is_invalid_mqtt_3_3_2_2() {
    for topic in [&b"a/+"[..], b"#", b"a/#", b"+"] {
        let body = [&[0x00, topic.len() as u8][..], topic, b"x"].concat();
        for version in [V3_1_1, V5] {
            let e = err(
                &frame(
                    0x30,
                    &[&body[..], if version.is_v5() { b"\x00" } else { b"" }].concat(),
                ),
                version,
            );
            assert!(matches!(e, DecodeError::TopicNameInvalid(_)), "{e:?}");
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
        }
    }
}

#[test]
fn empty_topic_name_needs_a_topic_alias_5_0_3_3_2_1() {
    // 3.1.1: topic names are at least one character (MQTT-4.7.3-1).
    assert!(is_protocol(&err(&frame(0x30, b"\x00\x00hi"), V3_1_1)));
    assert!(is_protocol(&err(&frame(0x30, b"\x00\x00\x00hi"), V5)));
    let p = publish_of(ok(&frame(0x30, b"\x00\x00\x03\x23\x00\x05hi"), V5));
    assert_eq!((&*p.topic, p.properties.topic_alias), ("", Some(5)));
}

#[test]
fn topic_alias_0_is_a_protocol_error_5_0_3_3_2_3_4() {
    assert!(is_protocol(&err(&publish5(b"\x03\x23\x00\x00"), V5)));
}

#[test]
fn publish_qos_above_0_needs_a_non_zero_packet_id_mqtt_2_3_1_1() {
    assert!(is_protocol(&err(
        &frame(0x32, b"\x00\x01a\x00\x00"),
        V3_1_1
    )));
    assert!(is_protocol(&err(
        &frame(0x34, b"\x00\x01a\x00\x00\x00"),
        V5
    )));
    // Missing identifier altogether.
    assert!(is_malformed(&err(&frame(0x32, b"\x00\x01a\x00"), V3_1_1)));
}

#[test]
fn publish_qos_0_has_no_packet_id() {
    let p = publish_of(ok(&frame(0x30, b"\x00\x01a\x00\x07"), V3_1_1));
    assert_eq!((p.packet_id, &p.payload[..]), (0, &b"\x00\x07"[..]));
}

#[test]
fn payload_format_indicator_must_be_0_or_1_5_0_3_3_2_3_2() {
    assert!(is_protocol(&err(&publish5(b"\x02\x01\x02"), V5)));
}

#[test]
fn payload_must_match_format_indicator_1_5_0_3_3_2_3_2() {
    let e = err(&publish5(b"\x02\x01\x01\xFF\xFE"), V5);
    assert_eq!(e, DecodeError::PayloadFormatInvalid);
    assert_eq!(e.reason_code(), ReasonCode::PAYLOAD_FORMAT_INVALID);
    let p = publish_of(ok(&publish5("\x02\x01\x01héllo".as_bytes()), V5));
    assert_eq!(p.properties.payload_format_indicator, Some(1));
    // Indicator 0 says nothing about the bytes.
    ok(&publish5(b"\x02\x01\x00\xFF"), V5);
}

#[test]
fn subscription_identifier_may_repeat_in_publish_5_0_3_3_2_3_8() {
    let p = publish_of(ok(
        &publish5(b"\x09\x0B\x01\x0B\x02\x0B\xFF\xFF\xFF\x7F"),
        V5,
    ));
    assert_eq!(p.properties.subscription_identifiers, [1, 2, 268_435_455]);
}

#[test]
fn subscription_identifier_0_is_a_protocol_error_5_0_3_3_2_3_8() {
    assert!(is_protocol(&err(&publish5(b"\x02\x0B\x00"), V5)));
}

#[test]
fn subscription_identifier_longer_than_4_bytes_is_malformed_5_0_1_5_5() {
    assert!(is_malformed(&err(
        &publish5(b"\x06\x0B\xFF\xFF\xFF\xFF\x01"),
        V5
    )));
}

#[test]
fn response_topic_must_not_have_wildcards_mqtt_3_3_2_14() {
    assert!(is_protocol(&err(&publish5(b"\x06\x08\x00\x03a/#"), V5)));
}

#[test]
fn publish_5_properties_decode() {
    let props = b"\x1C\x01\x01\x02\x00\x00\x00\x0A\x23\x00\x02\x08\x00\x01r\x09\x00\x02\xAB\xCD\x03\x00\x04text\x0B\x05";
    let p = publish_of(ok(&publish5(&[&props[..], b"body"].concat()), V5));
    let pp = &p.properties;
    assert_eq!(pp.payload_format_indicator, Some(1));
    assert_eq!(pp.message_expiry_interval, Some(10));
    assert_eq!(pp.topic_alias, Some(2));
    assert_eq!(pp.response_topic.as_deref(), Some("r"));
    assert_eq!(pp.correlation_data.as_deref(), Some(&b"\xAB\xCD"[..]));
    assert_eq!(pp.content_type.as_deref(), Some("text"));
    assert_eq!(pp.subscription_identifiers, [5]);
    assert_eq!(&p.payload[..], b"body");
}

// ---------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP (sections 3.4 to 3.7)
// ---------------------------------------------------------------------------

#[test]
fn acks_3_1_1_are_just_the_packet_id() {
    for (first, make) in [
        (0x40u8, Packet::PubAck as fn(PubAck) -> Packet),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ] {
        assert_eq!(
            ok(&frame(first, b"\x12\x34"), V3_1_1),
            make(PubAck::new(0x1234))
        );
        assert!(is_malformed(&err(&frame(first, b"\x12\x34\x00"), V3_1_1)));
    }
}

#[test]
fn ack_packet_id_0_is_a_protocol_error_mqtt_2_3_1_1() {
    for first in [0x40u8, 0x50, 0x62, 0x70, 0x90, 0xB0] {
        assert!(
            is_protocol(&err(&frame(first, b"\x00\x00\x00"), V5)),
            "{first:#x}"
        );
    }
}

#[test]
fn acks_5_short_forms_5_0_3_4_2_1() {
    // Remaining length 2: Success, no properties.
    assert_eq!(ok(b"\x40\x02\x00\x01", V5), Packet::PubAck(PubAck::new(1)));
    // Remaining length 3: reason code, no properties.
    let no_subscribers = PubAck {
        code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..PubAck::new(1)
    };
    assert_eq!(
        ok(b"\x40\x03\x00\x01\x10", V5),
        Packet::PubAck(no_subscribers.clone())
    );
    // Long form with an empty property section.
    assert_eq!(
        ok(b"\x40\x04\x00\x01\x10\x00", V5),
        Packet::PubAck(no_subscribers)
    );
    // With a Reason String.
    let Packet::PubRec(a) = ok(b"\x50\x09\x00\x01\x80\x05\x1F\x00\x02no", V5) else {
        panic!()
    };
    assert_eq!(a.properties.reason_string.as_deref(), Some("no"));
}

#[test]
fn ack_reason_codes_must_be_from_their_table_mqtt_3_4_2_1() {
    // PUBACK cannot say "Packet Identifier not found".
    assert!(is_protocol(&err(b"\x40\x03\x00\x01\x92", V5)));
    // MQTT-3.6.2-1: PUBREL only has 0x00 and 0x92.
    assert!(is_protocol(&err(b"\x62\x03\x00\x01\x10", V5)));
    ok(b"\x62\x03\x00\x01\x92", V5);
    // MQTT-3.7.2-1.
    assert!(is_protocol(&err(b"\x70\x03\x00\x01\x80", V5)));
}

#[test]
fn ack_with_a_foreign_property_is_malformed() {
    assert!(is_malformed(&err(
        b"\x40\x07\x00\x01\x00\x03\x23\x00\x01",
        V5
    )));
}

// ---------------------------------------------------------------------------
// SUBSCRIBE (section 3.8)
// ---------------------------------------------------------------------------

#[test]
fn subscribe_3_1_1_decodes() {
    let Packet::Subscribe(s) = ok(
        &frame(0x82, b"\x00\x0A\x00\x03a/+\x01\x00\x01#\x02"),
        V3_1_1,
    ) else {
        panic!()
    };
    assert_eq!(s.packet_id, 10);
    assert_eq!(s.filters.len(), 2);
    assert_eq!(
        (&*s.filters[0].filter, s.filters[0].options.qos),
        ("a/+", QoS::AtLeastOnce)
    );
    assert_eq!(
        (&*s.filters[1].filter, s.filters[1].options.qos),
        ("#", QoS::ExactlyOnce)
    );
}

#[test]
fn subscribe_needs_a_filter_mqtt_3_8_3_3() {
    assert!(is_protocol(&err(&frame(0x82, b"\x00\x01"), V3_1_1)));
    // 5.0 MQTT-3.8.3-2.
    assert!(is_protocol(&err(&frame(0x82, b"\x00\x01\x00"), V5)));
}

#[test]
fn subscribe_needs_a_non_zero_packet_id_mqtt_2_3_1_1() {
    assert!(is_protocol(&err(
        &frame(0x82, b"\x00\x00\x00\x01a\x00"),
        V3_1_1
    )));
}

#[test]
fn subscribe_3_1_1_reserved_bits_and_qos_3_are_malformed_mqtt_3_8_3_4() {
    for options in [0x03u8, 0x04, 0x80, 0xFC] {
        let wire = frame(0x82, &[b"\x00\x01\x00\x01a", &[options][..]].concat());
        assert!(is_malformed(&err(&wire, V3_1_1)), "{options:#x}");
    }
}

#[test]
fn subscribe_5_reserved_bits_are_malformed_mqtt_3_8_3_5() {
    for options in [0x40u8, 0x80] {
        let wire = frame(0x82, &[b"\x00\x01\x00\x00\x01a", &[options][..]].concat());
        assert!(is_malformed(&err(&wire, V5)));
    }
}

#[test]
fn subscribe_5_qos_3_and_retain_handling_3_are_protocol_errors_5_0_3_8_3_1() {
    assert!(is_protocol(&err(
        &frame(0x82, b"\x00\x01\x00\x00\x01a\x03"),
        V5
    )));
    assert!(is_protocol(&err(
        &frame(0x82, b"\x00\x01\x00\x00\x01a\x30"),
        V5
    )));
}

#[test]
fn subscribe_5_options_decode_5_0_3_8_3_1() {
    let Packet::Subscribe(s) = ok(&frame(0x82, b"\x00\x01\x00\x00\x01a\x2E"), V5) else {
        panic!()
    };
    assert_eq!(
        s.filters[0].options,
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }
    );
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error_mqtt_3_8_3_4_v5() {
    let wire = frame(0x82, b"\x00\x01\x00\x00\x0A$share/g/a\x04");
    assert!(is_protocol(&err(&wire, V5)));
    let wire = frame(0x82, b"\x00\x01\x00\x00\x0A$share/g/a\x00");
    ok(&wire, V5);
}

#[test]
fn empty_topic_filter_is_a_protocol_error_mqtt_4_7_3_1() {
    assert!(is_protocol(&err(
        &frame(0x82, b"\x00\x01\x00\x00\x00"),
        V3_1_1
    )));
    assert!(is_protocol(&err(&frame(0xA2, b"\x00\x01\x00\x00"), V3_1_1)));
}

#[test]
fn filter_wildcard_placement_is_left_to_the_broker() {
    let Packet::Subscribe(s) = ok(&frame(0x82, b"\x00\x01\x00\x05a/#/b\x00"), V3_1_1) else {
        panic!()
    };
    assert_eq!(&*s.filters[0].filter, "a/#/b");
}

#[test]
fn subscribe_missing_options_byte_is_malformed() {
    assert!(is_malformed(&err(
        &frame(0x82, b"\x00\x01\x00\x01a"),
        V3_1_1
    )));
}

#[test]
fn subscribe_subscription_identifier_rules_5_0_3_8_2_1_2() {
    // Value 0.
    assert!(is_protocol(&err(
        &frame(0x82, b"\x00\x01\x02\x0B\x00\x00\x01a\x00"),
        V5
    )));
    // Twice: only PUBLISH may repeat it.
    assert!(is_protocol(&err(
        &frame(0x82, b"\x00\x01\x04\x0B\x01\x0B\x02\x00\x01a\x00"),
        V5
    )));
    let Packet::Subscribe(s) = ok(&frame(0x82, b"\x00\x01\x03\x0B\x80\x01\x00\x01a\x00"), V5)
    else {
        panic!()
    };
    assert_eq!(s.properties.subscription_identifier, Some(128));
}

// ---------------------------------------------------------------------------
// SUBACK, UNSUBSCRIBE, UNSUBACK (sections 3.9 to 3.11)
// ---------------------------------------------------------------------------

#[test]
fn suback_3_1_1_return_codes_are_kept_as_is_mqtt_3_9_3_2() {
    let Packet::SubAck(s) = ok(&frame(0x90, b"\x00\x01\x00\x01\x02\x80"), V3_1_1) else {
        panic!()
    };
    assert_eq!(s.codes, [0x00, 0x01, 0x02, 0x80].map(ReasonCode).to_vec());
    assert!(is_protocol(&err(&frame(0x90, b"\x00\x01\x03"), V3_1_1)));
    assert!(is_protocol(&err(&frame(0x90, b"\x00\x01\x87"), V3_1_1)));
}

#[test]
fn suback_needs_a_code() {
    assert!(is_protocol(&err(&frame(0x90, b"\x00\x01"), V3_1_1)));
    assert!(is_protocol(&err(&frame(0x90, b"\x00\x01\x00"), V5)));
}

#[test]
fn suback_5_codes_come_from_its_table_5_0_3_9_3() {
    let Packet::SubAck(s) = ok(&frame(0x90, b"\x00\x01\x00\x8F\xA2\x01"), V5) else {
        panic!()
    };
    assert_eq!(s.codes, [0x8F, 0xA2, 0x01].map(ReasonCode).to_vec());
    assert!(is_protocol(&err(&frame(0x90, b"\x00\x01\x00\x03"), V5)));
}

#[test]
fn unsubscribe_decodes() {
    let Packet::Unsubscribe(u) = ok(&frame(0xA2, b"\x00\x02\x00\x01a\x00\x03b/#"), V3_1_1) else {
        panic!()
    };
    assert_eq!(u.packet_id, 2);
    assert_eq!(
        u.filters,
        ["a", "b/#"].map(ByteString::from_static).to_vec()
    );
}

#[test]
fn unsubscribe_needs_a_filter_mqtt_3_10_3_2() {
    assert!(is_protocol(&err(&frame(0xA2, b"\x00\x02"), V3_1_1)));
    assert!(is_protocol(&err(&frame(0xA2, b"\x00\x02\x00"), V5)));
}

#[test]
fn unsubscribe_needs_a_non_zero_packet_id_mqtt_2_3_1_1() {
    assert!(is_protocol(&err(
        &frame(0xA2, b"\x00\x00\x00\x01a"),
        V3_1_1
    )));
}

#[test]
fn unsuback_3_1_1_has_no_codes() {
    assert_eq!(
        ok(b"\xB0\x02\x00\x05", V3_1_1),
        Packet::UnsubAck(UnsubAck {
            packet_id: 5,
            ..Default::default()
        })
    );
    assert!(is_malformed(&err(b"\xB0\x03\x00\x05\x00", V3_1_1)));
}

#[test]
fn unsuback_5_has_codes_from_its_table_5_0_3_11_3() {
    let Packet::UnsubAck(u) = ok(b"\xB0\x05\x00\x05\x00\x11\x00", V5) else {
        panic!()
    };
    assert_eq!(u.codes, [ReasonCode(0x11), ReasonCode(0x00)]);
    assert!(is_protocol(&err(b"\xB0\x03\x00\x05\x00", V5)));
    assert!(is_protocol(&err(b"\xB0\x04\x00\x05\x00\x10", V5)));
}

// ---------------------------------------------------------------------------
// PINGREQ, PINGRESP, DISCONNECT, AUTH (sections 3.12 to 3.15)
// ---------------------------------------------------------------------------

#[test]
fn ping_has_no_body() {
    for version in VERSIONS {
        assert_eq!(ok(b"\xC0\x00", version), Packet::PingReq);
        assert_eq!(ok(b"\xD0\x00", version), Packet::PingResp);
        assert!(is_malformed(&err(b"\xC0\x01\x00", version)));
        assert!(is_malformed(&err(b"\xD0\x01\x00", version)));
    }
}

#[test]
fn disconnect_3_1_1_has_no_body() {
    assert_eq!(
        ok(b"\xE0\x00", V3_1_1),
        Packet::Disconnect(Disconnect::default())
    );
    assert!(is_malformed(&err(b"\xE0\x01\x00", V3_1_1)));
    assert!(is_malformed(&err(b"\xE0\x01\x00", V3_1)));
}

#[test]
fn disconnect_5_short_forms_5_0_3_14_2_1() {
    assert_eq!(
        ok(b"\xE0\x00", V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
    );
    assert_eq!(
        ok(b"\xE0\x01\x04", V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE))
    );
    let Packet::Disconnect(d) = ok(b"\xE0\x0B\x8E\x09\x11\x00\x00\x00\x00\x1C\x00\x01s", V5) else {
        panic!()
    };
    assert_eq!(d.code, ReasonCode::SESSION_TAKEN_OVER);
    assert_eq!(d.properties.session_expiry_interval, Some(0));
    assert_eq!(d.properties.server_reference.as_deref(), Some("s"));
}

#[test]
fn disconnect_5_reason_code_from_its_table_mqtt_3_14_2_1() {
    assert!(is_protocol(&err(b"\xE0\x01\x05", V5)));
    assert!(is_protocol(&err(b"\xE0\x01\x10", V5)));
}

#[test]
fn disconnect_5_foreign_property_is_malformed() {
    assert!(is_malformed(&err(b"\xE0\x05\x00\x03\x21\x00\x01", V5)));
}

#[test]
fn auth_empty_body_means_success_5_0_3_15_2_1() {
    assert_eq!(ok(b"\xF0\x00", V5), Packet::Auth(Auth::default()));
    // A reason code must come with its property length.
    assert!(is_malformed(&err(b"\xF0\x01\x18", V5)));
    let Packet::Auth(a) = ok(b"\xF0\x0A\x18\x08\x15\x00\x01m\x16\x00\x01d", V5) else {
        panic!()
    };
    assert_eq!(a.code, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(a.properties.authentication_method.as_deref(), Some("m"));
    assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"d"[..]));
}

#[test]
fn auth_reason_code_from_its_table_mqtt_3_15_2_1() {
    assert!(is_protocol(&err(b"\xF0\x02\x01\x00", V5)));
    assert!(is_protocol(&err(b"\xF0\x02\x87\x00", V5)));
}

#[test]
fn every_error_maps_to_its_reason_code() {
    assert_eq!(
        DecodeError::Malformed("x").reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        DecodeError::Protocol("x").reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
}
