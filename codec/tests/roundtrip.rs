//! Property tests: every valid packet of every version survives
//! encode → decode unchanged, and `encoded_len` is exact.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use starling_codec::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decode_inverts_encode((version, packet) in versioned_packet()) {
        let wire = enc(&packet, version);
        let mut buf = wire.clone();
        let decoded = decode(&mut buf, version, usize::MAX);
        prop_assert_eq!(decoded, Ok(Some(packet.clone())));
        prop_assert!(buf.is_empty());
        // Encoding is canonical: a decoded packet encodes to the same bytes.
        prop_assert_eq!(enc(&packet, version), wire);
    }

    #[test]
    fn encoded_len_is_what_encode_appends((version, packet) in versioned_packet()) {
        let mut buf = BytesMut::from(&b"already here"[..]);
        encode(&packet, version, &mut buf).unwrap();
        prop_assert_eq!(buf.len() - 12, encoded_len(&packet, version));
    }

    /// A borrowed PUBLISH encodes to the same bytes as the owned one.
    #[test]
    fn a_borrowed_publish_encodes_like_the_packet((version, packet) in versioned_packet()) {
        if let Packet::Publish(publish) = &packet {
            let mut buf = BytesMut::from(&b"already here"[..]);
            encode_publish(&publish.as_ref(), version, &mut buf).unwrap();
            prop_assert_eq!(&buf[12..], &enc(&packet, version)[..]);
            prop_assert_eq!(buf.len() - 12, publish_encoded_len(&publish.as_ref(), version));
        }
    }

    /// The limit applies to the whole packet, fixed header included.
    #[test]
    fn max_packet_size_counts_the_fixed_header((version, packet) in versioned_packet()) {
        let wire = enc(&packet, version);
        let size = wire.len();
        let mut buf = wire.clone();
        prop_assert!(decode(&mut buf, version, size).unwrap().is_some());
        let mut buf = wire.clone();
        prop_assert_eq!(
            decode(&mut buf, version, size - 1),
            Err(DecodeError::PacketTooLarge { size, max: size - 1 })
        );
    }

    /// Every proper prefix of a packet is "not yet" and consumes nothing.
    #[test]
    fn prefixes_are_incomplete((version, packet) in versioned_packet()) {
        let wire = enc(&packet, version);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None));
            prop_assert_eq!(buf.len(), cut);
        }
    }

    /// Packets back to back in one buffer come out one at a time, in order.
    #[test]
    fn packets_in_a_stream_decode_in_order(
        (version, packets) in proptest::sample::select(&VERSIONS[..])
            .prop_flat_map(|v| (Just(v), proptest::collection::vec(packet(v), 1..6)))
    ) {
        let mut buf = BytesMut::new();
        for p in &packets {
            encode(p, version, &mut buf).unwrap();
        }
        for p in &packets {
            prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(Some(p.clone())));
        }
        prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None));
    }
}
