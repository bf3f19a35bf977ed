//! Arbitrary bytes through the decoder of every protocol version. Whatever
//! decodes must re-encode (for the version it was decoded with), report its
//! encoded length exactly, and decode again to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_codec::{Packet, ProtocolVersion, decode, encode, encoded_len};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks a packet size limit so that path is fuzzed too.
    let Some((&limit, input)) = data.split_first() else {
        return;
    };
    let max = if limit == 0 {
        usize::MAX
    } else {
        usize::from(limit) * 4
    };
    for version in VERSIONS {
        let mut buf = BytesMut::from(input);
        loop {
            let before = buf.len();
            match decode(&mut buf, version, max) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before);
                    round_trip(&packet, version);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "incomplete decode consumed bytes");
                    break;
                }
                Err(_) => break,
            }
        }
    }
});

fn round_trip(packet: &Packet, version: ProtocolVersion) {
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let mut wire = BytesMut::new();
    encode(packet, version, &mut wire).expect("a decoded packet is encodable");
    assert_eq!(wire.len(), encoded_len(packet, version));
    let canonical = wire.clone();
    let again = decode(&mut wire, version, usize::MAX)
        .expect("re-encoded packet decodes")
        .expect("re-encoded packet is complete");
    assert_eq!(&again, packet);
    assert!(wire.is_empty());
    let mut twice = BytesMut::new();
    encode(&again, version, &mut twice).expect("encodable");
    assert_eq!(twice, canonical, "encoding is not canonical");
}
