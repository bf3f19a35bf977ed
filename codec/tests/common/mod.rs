//! Shared helpers and proptest strategies: arbitrary *valid* packets of every
//! kind for each protocol version, holding only fields that version has.
//!
//! The reason code tables are written out again here rather than taken from
//! the crate, so a wrong table in the decoder shows up as a failing test.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::{BoxedStrategy, Union};
use starling_codec::*;

pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Decodes `bytes` as one buffer; on success the packet must have used all
/// of it.
pub fn dec(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = decode(&mut buf, version, usize::MAX)?;
    if out.is_some() {
        assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
    } else {
        assert_eq!(&buf[..], bytes, "an incomplete decode consumed bytes");
    }
    Ok(out)
}

/// Decodes a packet that must be valid.
pub fn ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
    match dec(bytes, version) {
        Ok(Some(packet)) => packet,
        other => panic!("expected a packet from {bytes:02X?}, got {other:?}"),
    }
}

/// Decodes a packet that must be rejected.
pub fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    match dec(bytes, version) {
        Err(e) => e,
        other => panic!("expected an error from {bytes:02X?}, got {other:?}"),
    }
}

pub fn is_malformed(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Malformed(_))
}

pub fn is_protocol(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Protocol(_))
}

/// Encodes and checks `encoded_len` against what was appended.
pub fn enc(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodable");
    assert_eq!(buf.len(), encoded_len(packet, version), "{packet:?}");
    buf
}

// ---- reason codes allowed per packet (MQTT 5.0 section 3) ----

pub const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
pub const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub const PUBREL_CODES: &[u8] = &[0x00, 0x92];
pub const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
pub const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
pub const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
pub const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn code(table: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    select(table).prop_map(ReasonCode)
}

// ---- primitive values ----

/// Any UTF-8 string without U+0000, including multi-byte characters.
pub fn text() -> BoxedStrategy<ByteString> {
    "[^\\x00]{0,10}".prop_map(ByteString::from).boxed()
}

/// A topic name: non-empty, no wildcards.
pub fn topic_name() -> BoxedStrategy<ByteString> {
    "[^\\x00+#]{1,10}".prop_map(ByteString::from).boxed()
}

/// A topic filter as far as the decoder cares: non-empty UTF-8, with
/// wildcards anywhere and sometimes a share prefix.
pub fn topic_filter() -> BoxedStrategy<ByteString> {
    prop_oneof![
        "[^\\x00]{1,10}",
        "[a-c/+#]{1,8}",
        "\\$share/[a-c]{1,3}/[a-c/+#]{1,5}",
    ]
    .prop_map(ByteString::from)
    .boxed()
}

pub fn binary() -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from).boxed()
}

pub fn user_properties() -> BoxedStrategy<Vec<UserProperty>> {
    vec((text(), text()), 0..3).boxed()
}

pub fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn subscription_id() -> impl Strategy<Value = u32> {
    prop_oneof![1..=127u32, 1..=268_435_455u32, Just(268_435_455u32)]
}

// ---- properties ----

pub fn connect_properties() -> BoxedStrategy<ConnectProperties> {
    (
        of(any::<u32>()),
        of(1..=u16::MAX),
        of(1..=u32::MAX),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        user_properties(),
        of(text()),
        of(binary()),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, up, am, ad)| {
            // Authentication Data needs an Authentication Method (3.1.2.11.10).
            let am = if ad.is_some() && am.is_none() {
                Some(ByteString::from_static("SCRAM-SHA-1"))
            } else {
                am
            };
            ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method: am,
                authentication_data: ad,
            }
        })
        .boxed()
}

pub fn will_properties() -> BoxedStrategy<WillProperties> {
    (
        of(any::<u32>()),
        of(0..=1u8),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
        .boxed()
}

pub fn connack_properties() -> BoxedStrategy<ConnAckProperties> {
    let first = (
        of(any::<u32>()),
        of(1..=u16::MAX),
        of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        of(any::<bool>()),
        of(1..=u32::MAX),
        of(text()),
        of(any::<u16>()),
        of(text()),
        user_properties(),
    );
    let second = (
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<u16>()),
        of(text()),
        of(text()),
        of(text()),
        of(binary()),
    );
    (first, second)
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
        .boxed()
}

pub fn publish_properties() -> BoxedStrategy<PublishProperties> {
    (
        of(0..=1u8),
        of(any::<u32>()),
        of(1..=u16::MAX),
        of(topic_name()),
        of(binary()),
        user_properties(),
        vec(subscription_id(), 0..3),
        of(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
        .boxed()
}

pub fn ack_properties() -> BoxedStrategy<AckProperties> {
    (of(text()), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        })
        .boxed()
}

pub fn disconnect_properties() -> BoxedStrategy<DisconnectProperties> {
    (of(any::<u32>()), of(text()), user_properties(), of(text()))
        .prop_map(|(sei, rs, up, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        })
        .boxed()
}

pub fn auth_properties() -> BoxedStrategy<AuthProperties> {
    (of(text()), of(binary()), of(text()), user_properties())
        .prop_map(|(am, ad, rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        })
        .boxed()
}

/// Properties only exist in MQTT 5: other versions get the default.
fn v5_or_default<T: Default + std::fmt::Debug + Clone + 'static>(
    version: ProtocolVersion,
    strategy: BoxedStrategy<T>,
) -> BoxedStrategy<T> {
    if version.is_v5() {
        strategy
    } else {
        Just(T::default()).boxed()
    }
}

/// A payload format indicator of 1 needs a UTF-8 payload: downgrade it
/// otherwise.
fn fit_format(indicator: &mut Option<u8>, payload: &[u8]) {
    if *indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        *indicator = Some(0);
    }
}

// ---- packets ----

pub fn connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        v5_or_default(version, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, mut properties)| {
            fit_format(&mut properties.payload_format_indicator, &payload);
            LastWill {
                topic,
                payload,
                qos,
                retain,
                properties,
            }
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will),
        of(text()),
        of(binary()),
        v5_or_default(version, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before MQTT 5 a password needs a user name (MQTT-3.1.2-22).
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

pub fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if version.is_v5() {
        code(CONNACK_CODES).boxed()
    } else {
        (0..=5u8).prop_map(ReasonCode).boxed()
    };
    (
        any::<bool>(),
        codes,
        v5_or_default(version, connack_properties()),
    )
        .prop_map(move |(session_present, code, properties)| {
            Packet::ConnAck(ConnAck {
                // Refused connections have no session (MQTT-3.2.2-4 / -6);
                // MQTT 3.1 has no such flag at all.
                session_present: session_present
                    && code == ReasonCode::SUCCESS
                    && version != ProtocolVersion::V3_1,
                code,
                properties,
            })
        })
        .boxed()
}

pub fn publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let payload = prop_oneof![
        binary(),
        "[^\\x00]{0,20}".prop_map(Bytes::from),
        vec(any::<u8>(), 0..600).prop_map(Bytes::from),
    ];
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        v5_or_default(version, publish_properties()),
        payload,
    )
        .prop_map(
            |(qos, dup, retain, topic, empty_topic, id, mut properties, payload)| {
                fit_format(&mut properties.payload_format_indicator, &payload);
                let at_most_once = qos == QoS::AtMostOnce;
                Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    // An empty name refers to a Topic Alias (MQTT 5 only).
                    topic: if empty_topic && properties.topic_alias.is_some() {
                        ByteString::new()
                    } else {
                        topic
                    },
                    packet_id: if at_most_once { 0 } else { id },
                    properties: properties.into(),
                    payload,
                }
            },
        )
        .prop_map(Packet::Publish)
        .boxed()
}

fn pub_ack(version: ProtocolVersion, table: &'static [u8]) -> BoxedStrategy<PubAck> {
    if !version.is_v5() {
        return packet_id().prop_map(PubAck::new).boxed();
    }
    (packet_id(), code(table), ack_properties())
        .prop_map(|(packet_id, code, properties)| PubAck {
            packet_id,
            code,
            properties,
        })
        .boxed()
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if !version.is_v5() {
        return qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed();
    }
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling)
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
        .boxed()
}

pub fn subscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let filter =
        (topic_filter(), subscription_options(version)).prop_map(|(filter, mut options)| {
            // No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4).
            if filter.starts_with("$share/") {
                options.no_local = false;
            }
            SubscribeFilter { filter, options }
        });
    let properties = v5_or_default(
        version,
        (of(subscription_id()), user_properties())
            .prop_map(
                |(subscription_identifier, user_properties)| SubscribeProperties {
                    subscription_identifier,
                    user_properties,
                },
            )
            .boxed(),
    );
    (packet_id(), properties, vec(filter, 1..4))
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

pub fn suback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let table: &'static [u8] = if version.is_v5() {
        SUBACK_CODES
    } else {
        &[0x00, 0x01, 0x02, 0x80]
    };
    (
        packet_id(),
        v5_or_default(version, ack_properties()),
        vec(code(table), 1..5),
    )
        .prop_map(|(packet_id, properties, codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                codes,
            })
        })
        .boxed()
}

pub fn unsubscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let properties = v5_or_default(
        version,
        user_properties()
            .prop_map(|user_properties| UnsubscribeProperties { user_properties })
            .boxed(),
    );
    (packet_id(), properties, vec(topic_filter(), 1..4))
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

pub fn unsuback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !version.is_v5() {
        return packet_id()
            .prop_map(|packet_id| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    ..Default::default()
                })
            })
            .boxed();
    }
    (
        packet_id(),
        ack_properties(),
        vec(code(UNSUBACK_CODES), 1..5),
    )
        .prop_map(|(packet_id, properties, codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                codes,
            })
        })
        .boxed()
}

pub fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !version.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (code(DISCONNECT_CODES), disconnect_properties())
        .prop_map(|(code, properties)| Packet::Disconnect(Disconnect { code, properties }))
        .boxed()
}

pub fn auth() -> BoxedStrategy<Packet> {
    (code(AUTH_CODES), auth_properties())
        .prop_map(|(code, properties)| Packet::Auth(Auth { code, properties }))
        .boxed()
}

/// Any valid packet of `version`, every kind equally likely.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut kinds = vec![
        connect(version),
        connack(version),
        publish(version),
        pub_ack(version, PUBACK_CODES)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_ack(version, PUBACK_CODES)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_ack(version, PUBREL_CODES)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_ack(version, PUBREL_CODES)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(version),
    ];
    if version.is_v5() {
        kinds.push(auth());
    }
    Union::new(kinds).boxed()
}

/// A version and a valid packet of that version.
pub fn versioned_packet() -> BoxedStrategy<(ProtocolVersion, Packet)> {
    select(&VERSIONS[..])
        .prop_flat_map(|version| (Just(version), packet(version)))
        .boxed()
}
