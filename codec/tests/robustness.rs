//! Hostile input: arbitrary and mutated bytes never panic the decoder, never
//! make it allocate beyond what the input can justify, and whatever it
//! accepts survives a round trip.

mod common;

use std::mem::size_of;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use starling_codec::*;

/// Decodes packets from `input` until it runs dry or fails, checking each
/// packet and the buffer discipline on the way.
fn decode_all(input: &[u8], version: ProtocolVersion, max: usize) {
    let mut buf = BytesMut::from(input);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    loop {
        let before = buf.clone();
        let capacity = buf.capacity();
        match decode(&mut buf, version, max) {
            Ok(Some(packet)) => {
                let used = before.len() - buf.len();
                assert!(used >= 2 && used <= max);
                check_heap(&packet, used);
                check_zero_copy(&packet, &range);
                check_round_trip(&packet, version);
            }
            Ok(None) => {
                // Nothing consumed and nothing reserved on the peer's word.
                assert_eq!(buf, before);
                assert_eq!(buf.capacity(), capacity);
                return;
            }
            Err(_) => {
                // A packet that framed but failed is consumed; nothing grew.
                assert!(buf.capacity() <= capacity);
                return;
            }
        }
    }
}

/// Whatever decodes, re-encodes (for the version it was decoded with) to
/// bytes that decode to the same packet.
fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let wire = enc(packet, version);
    let mut buf = wire.clone();
    assert_eq!(
        decode(&mut buf, version, usize::MAX).as_ref(),
        Ok(&Some(packet.clone()))
    );
    assert!(buf.is_empty());
}

/// The heap a decoded packet owns: only its `Vec`s and the CONNECT box,
/// since strings and binary data are slices of the input. Bounded by a
/// constant factor of the packet's size: nothing is sized from a count the
/// peer announced.
fn check_heap(packet: &Packet, wire_len: usize) {
    let users = |v: &Vec<UserProperty>| v.capacity() * size_of::<UserProperty>();
    let heap = match packet {
        Packet::Connect(c) => {
            size_of::<Connect>()
                + users(&c.properties.user_properties)
                + c.will
                    .as_ref()
                    .map_or(0, |w| users(&w.properties.user_properties))
        }
        Packet::ConnAck(c) => users(&c.properties.user_properties),
        Packet::Publish(p) => {
            users(&p.properties.user_properties)
                + p.properties.subscription_identifiers.capacity() * size_of::<u32>()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            users(&a.properties.user_properties)
        }
        Packet::Subscribe(s) => {
            s.filters.capacity() * size_of::<SubscribeFilter>()
                + users(&s.properties.user_properties)
        }
        Packet::SubAck(s) => s.codes.capacity() + users(&s.properties.user_properties),
        Packet::Unsubscribe(u) => {
            u.filters.capacity() * size_of::<ByteString>() + users(&u.properties.user_properties)
        }
        Packet::UnsubAck(u) => u.codes.capacity() + users(&u.properties.user_properties),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => users(&d.properties.user_properties),
        Packet::Auth(a) => users(&a.properties.user_properties),
    };
    // A 5-byte User Property becomes a 64-byte pair and a `Vec` may double:
    // 32 bytes per input byte, plus the first (4-element) allocation of up
    // to two property lists and the CONNECT box.
    let bound = 32 * wire_len + 2 * 4 * size_of::<UserProperty>() + size_of::<Connect>();
    assert!(
        heap <= bound,
        "{heap} heap bytes from {wire_len} wire bytes"
    );
}

/// Every string and binary field points into the input buffer.
fn check_zero_copy(packet: &Packet, input: &std::ops::Range<usize>) {
    let mut slices: Vec<&[u8]> = Vec::new();
    fn users<'a>(out: &mut Vec<&'a [u8]>, v: &'a [UserProperty]) {
        for (k, val) in v {
            out.push(k.as_bytes());
            out.push(val.as_bytes());
        }
    }
    fn opt<'a>(out: &mut Vec<&'a [u8]>, s: Option<&'a ByteString>) {
        out.extend(s.map(|s| s.as_bytes().as_ref()));
    }
    fn bin<'a>(out: &mut Vec<&'a [u8]>, b: Option<&'a Bytes>) {
        out.extend(b.map(|b| b.as_ref()));
    }
    match packet {
        Packet::Connect(c) => {
            slices.push(c.client_id.as_bytes());
            opt(&mut slices, c.username.as_ref());
            bin(&mut slices, c.password.as_ref());
            users(&mut slices, &c.properties.user_properties);
            opt(&mut slices, c.properties.authentication_method.as_ref());
            bin(&mut slices, c.properties.authentication_data.as_ref());
            if let Some(w) = &c.will {
                slices.push(w.topic.as_bytes());
                slices.push(&w.payload);
                users(&mut slices, &w.properties.user_properties);
                opt(&mut slices, w.properties.content_type.as_ref());
                opt(&mut slices, w.properties.response_topic.as_ref());
                bin(&mut slices, w.properties.correlation_data.as_ref());
            }
        }
        Packet::Publish(p) => {
            slices.push(p.topic.as_bytes());
            slices.push(&p.payload);
            users(&mut slices, &p.properties.user_properties);
            opt(&mut slices, p.properties.content_type.as_ref());
            opt(&mut slices, p.properties.response_topic.as_ref());
            bin(&mut slices, p.properties.correlation_data.as_ref());
        }
        Packet::Subscribe(s) => {
            for f in &s.filters {
                slices.push(f.filter.as_bytes());
            }
        }
        Packet::Unsubscribe(u) => {
            for f in &u.filters {
                slices.push(f.as_bytes());
            }
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            opt(&mut slices, a.properties.reason_string.as_ref());
            users(&mut slices, &a.properties.user_properties);
        }
        _ => {}
    }
    for s in slices.into_iter().filter(|s| !s.is_empty()) {
        let start = s.as_ptr() as usize;
        assert!(
            input.contains(&start) && start + s.len() <= input.end,
            "a field was copied out of the input"
        );
    }
}

/// One edit to a valid encoding.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Set { at: usize, value: u8 },
    Insert { at: usize, value: u8 },
    Remove { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (at, any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        (at, any::<u8>()).prop_map(|(at, value)| Mutation::Insert { at, value }),
        at.prop_map(|at| Mutation::Remove { at }),
        at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match *m {
        Mutation::Flip { at, bits } => bytes[at % n] ^= bits,
        Mutation::Set { at, value } => bytes[at % n] = value,
        Mutation::Insert { at, value } => bytes.insert(at % (n + 1), value),
        Mutation::Remove { at } => {
            bytes.remove(at % n);
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
    }
}

/// Keeps the remaining length consistent after an edit, so mutations reach
/// the body's validation instead of stopping at "incomplete".
fn refit_length(bytes: &mut Vec<u8>) {
    if let Ok(Some((_, used))) = read_remaining_length(bytes) {
        let body = bytes.split_off(1 + used);
        bytes.truncate(1);
        let mut len = body.len();
        loop {
            let byte = (len & 0x7F) as u8;
            len >>= 7;
            if len == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
        bytes.extend(body);
    }
}

fn max_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(usize::MAX), 0..300usize]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..300),
        version in select(&VERSIONS[..]),
        max in max_size(),
    ) {
        decode_all(&bytes, version, max);
    }

    /// Random bytes behind a plausible first byte and a correct length get
    /// much further into each packet decoder.
    #[test]
    fn arbitrary_bodies_never_panic(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..200),
        version in select(&VERSIONS[..]),
    ) {
        let mut bytes = vec![first, 0];
        bytes.extend(&body);
        refit_length(&mut bytes);
        decode_all(&bytes, version, usize::MAX);
    }

    #[test]
    fn mutated_packets_never_panic(
        (version, packet) in versioned_packet(),
        mutations in vec(mutation(), 1..4),
        refit in any::<bool>(),
    ) {
        let mut bytes = enc(&packet, version).to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if refit {
            refit_length(&mut bytes);
        }
        for v in VERSIONS {
            decode_all(&bytes, v, usize::MAX);
        }
    }

    #[test]
    fn valid_packets_pass_every_check(
        (version, packet) in versioned_packet(),
    ) {
        decode_all(&enc(&packet, version), version, usize::MAX);
    }
}

#[test]
fn many_tiny_user_properties_stay_within_the_heap_bound() {
    // 9,000 empty User Properties: the worst wire-to-heap ratio there is.
    let mut props = Vec::new();
    for _ in 0..9_000 {
        props.extend_from_slice(b"\x26\x00\x00\x00\x00");
    }
    let mut body = b"\x00\x01a".to_vec();
    let len = props.len();
    body.extend([
        (len & 0x7F) as u8 | 0x80,
        ((len >> 7) & 0x7F) as u8 | 0x80,
        (len >> 14) as u8,
    ]);
    body.extend(props);
    let mut wire = vec![0x30, 0x00];
    wire.extend(body);
    refit_length(&mut wire);
    decode_all(&wire, ProtocolVersion::V5, usize::MAX);
}
