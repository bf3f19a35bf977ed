//! MQTT 3.1, 3.1.1 and 5.0 control packets: types, decoding and encoding.
//!
//! The codec is its own crate because the broker, the benchmark tool and the
//! tests all speak MQTT through it (see docs/adr/0001-codec-crate.md).
//!
//! Decoding is zero-copy: a complete packet is split off the connection's
//! `BytesMut` and frozen, and payloads, binary properties and strings are
//! slices of that one allocation. Strings are [`ByteString`]s, so they are
//! validated as UTF-8 exactly once, at decode time.
//!
//! Encoding appends to a `BytesMut`; a PUBLISH can also be encoded from
//! borrowed parts ([`PublishRef`], [`encode_publish`]), which is how a
//! broker writes each delivery of one shared message.
//!
//! The decoder enforces the normative statements of both specifications that
//! can be checked on a single packet; every error carries the MQTT 5 reason
//! code a server should disconnect with ([`DecodeError::reason_code`]).

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
pub mod topic;
mod wire;

pub use bytestring::ByteString;
pub use decode::{decode, fixed_header_len, read_remaining_length};
pub use encode::{PublishRef, encode, encode_publish, encoded_len, publish_encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
