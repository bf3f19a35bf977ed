//! Encoding packets into a connection's write buffer.

use bytes::BytesMut;

use crate::error::EncodeError;
use crate::packet::{Packet, ProtocolVersion};

/// Appends `packet`, encoded for `version`, to `buf`. Fields the version does
/// not have (properties, reason codes before MQTT 5) are left out.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, buf);
    todo!("encode")
}

/// The number of bytes [`encode`] would append, fixed header included. Used
/// to honour a peer's Maximum Packet Size before encoding.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    todo!("encoded_len")
}
