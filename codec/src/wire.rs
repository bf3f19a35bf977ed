//! The primitive data representations of MQTT (section 1.5 of both
//! specifications): integers, Variable Byte Integers, UTF-8 strings and
//! binary data, read from a frozen packet and written to a `BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};

/// The largest value a four-byte Variable Byte Integer can carry.
pub(crate) const MAX_VBI: usize = 268_435_455;

/// The largest length a two-byte length prefix can announce.
pub(crate) const MAX_PREFIXED: usize = 65_535;

const SHORT: DecodeError = DecodeError::Malformed("packet is shorter than its fields");

/// Parses a Variable Byte Integer (section 1.5.5) at the start of `bytes`:
/// `Ok(None)` when it continues past the end, `(value, bytes used)` else.
/// Non-minimal encodings are accepted; a fifth byte is not.
pub(crate) fn parse_vbi(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ));
    }
    Ok(None)
}

/// Reads the fields of one packet body.
///
/// It owns the body as `Bytes` and consumes it from the front, so strings and
/// binary fields are split off the packet allocation instead of copied, and
/// the payload is whatever is left at the end.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Everything not read yet (a PUBLISH payload).
    pub(crate) fn rest(self) -> Bytes {
        self.buf
    }

    /// Fails unless the body has been read to its last byte.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "packet has bytes after its last field",
            ))
        }
    }

    /// Reads the next byte if it is `byte`; says whether it did.
    pub(crate) fn skip_if(&mut self, byte: u8) -> bool {
        let found = self.buf.first() == Some(&byte);
        if found {
            self.buf.advance(1);
        }
        found
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(SHORT);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer: at most four bytes, so it fits in a u32.
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        let (value, used) = parse_vbi(&self.buf)?.ok_or(SHORT)?;
        self.buf.advance(used);
        Ok(value as u32)
    }

    /// The next `len` bytes, sharing the packet allocation.
    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(SHORT);
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary Data (section 1.5.6): a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// A UTF-8 Encoded String (section 1.5.4): valid UTF-8 with no U+0000
    /// (MQTT-1.5.4-1, MQTT-1.5.4-2; 3.1.1 MQTT-1.5.3-1, MQTT-1.5.3-2).
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        to_string(raw)
    }
}

/// Validates raw bytes as an MQTT UTF-8 string without copying them.
pub(crate) fn to_string(raw: Bytes) -> Result<ByteString, DecodeError> {
    // Checked on bytes before UTF-8 validation: 0x00 never occurs inside a
    // multi-byte sequence, so this finds exactly the U+0000 characters.
    if raw.contains(&0) {
        return Err(DecodeError::Malformed("UTF-8 string contains U+0000"));
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))
}

/// The number of bytes a Variable Byte Integer takes for `value`.
pub(crate) fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a Variable Byte Integer; the caller has checked `value <= MAX_VBI`.
pub(crate) fn put_vbi(buf: &mut BytesMut, value: usize) {
    let (bytes, len) = vbi_bytes(value);
    buf.put_slice(&bytes[..len]);
}

/// A fixed header: the first byte and the remaining length, written with
/// one copy (each `put_*` call on a `BytesMut` costs a capacity check and
/// a `memcpy` call, which shows in the PUBLISH encoding profile).
pub(crate) fn put_fixed_header(buf: &mut BytesMut, first: u8, remaining: usize) {
    let (vbi, len) = vbi_bytes(remaining);
    let mut header = [first, 0, 0, 0, 0];
    header[1..].copy_from_slice(&vbi);
    buf.put_slice(&header[..1 + len]);
}

fn vbi_bytes(value: usize) -> ([u8; 4], usize) {
    let mut out = [0u8; 4];
    let mut value = value;
    for (i, slot) in out.iter_mut().enumerate() {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            *slot = byte;
            return (out, i + 1);
        }
        *slot = byte | 0x80;
    }
    // Unreachable for values up to MAX_VBI, which callers guarantee.
    (out, 4)
}

/// The encoded size of a length-prefixed field, or `TooLong` naming `what`.
pub(crate) fn prefixed_len(len: usize, what: &'static str) -> Result<usize, EncodeError> {
    if len > MAX_PREFIXED {
        return Err(EncodeError::TooLong(what));
    }
    Ok(2 + len)
}

/// Writes a length-prefixed string or binary field; its length was checked
/// by [`prefixed_len`] when the packet was sized.
pub(crate) fn put_prefixed(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_examples_of_section_1_5_5() {
        for (value, wire) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut buf = BytesMut::new();
            put_vbi(&mut buf, value);
            assert_eq!(&buf[..], wire, "{value}");
            assert_eq!(vbi_len(value), wire.len());
            assert_eq!(parse_vbi(wire), Ok(Some((value, wire.len()))));
        }
    }

    #[test]
    fn vbi_of_five_bytes_is_malformed_and_short_one_is_incomplete() {
        assert!(parse_vbi(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(parse_vbi(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert_eq!(parse_vbi(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert_eq!(parse_vbi(&[]), Ok(None));
        // Non-minimal encodings are not required to be rejected.
        assert_eq!(parse_vbi(&[0x80, 0x00]), Ok(Some((0, 2))));
    }

    #[test]
    fn strings_share_the_packet_allocation() {
        let packet = Bytes::from_static(b"\x00\x03abcrest");
        let mut r = Reader::new(packet.clone());
        let s = r.string().unwrap();
        assert_eq!(&*s, "abc");
        assert_eq!(s.as_bytes().as_ptr(), packet[2..].as_ptr());
        assert_eq!(&r.rest()[..], b"rest");
    }

    #[test]
    fn mqtt_1_5_4_1_and_2_strings_must_be_utf8_without_nul() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x02a\x00"));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        // An encoded surrogate (U+D800) is not UTF-8.
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03\xED\xA0\x80"));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn reads_past_the_end_are_malformed() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x05abc"));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(b"\x01"));
        assert!(r.u16().is_err());
        assert!(r.u32().is_err());
    }
}
