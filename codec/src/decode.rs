//! Decoding packets from a connection's read buffer.

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::packet::{Packet, ProtocolVersion};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing is
/// consumed), `Ok(Some(packet))` after splitting the packet's bytes off `buf`
/// (payloads and strings share that allocation: zero-copy), or an error when
/// the bytes can never become a valid packet.
///
/// `version` is the protocol level negotiated by this connection's CONNECT;
/// a CONNECT itself is decoded by the version it announces. `max_packet_size`
/// bounds the whole packet (fixed header included): a larger announced
/// remaining length is rejected as soon as the fixed header is readable,
/// before any of it is buffered.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    todo!("decode")
}

/// Reads the Variable Byte Integer remaining length that starts at `buf[1]`.
/// Returns `Ok(None)` when more bytes are needed, else `(remaining_length,
/// bytes_used_by_it)`.
pub fn read_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let _ = buf;
    todo!("read_remaining_length")
}

/// The size of the fixed header for a given remaining length (2..=5).
pub fn fixed_header_len(remaining_length: usize) -> usize {
    1 + match remaining_length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
