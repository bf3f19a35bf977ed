//! The CONNECT/CONNACK exchange (MQTT 5.0 §3.1, §3.2; 3.1.1 §3.1, §3.2).

use std::time::Duration;

use bytes::BytesMut;
use starling_codec::topic::validate_topic_name;
use starling_codec::{
    ByteString, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, ProtocolVersion,
    ReasonCode,
};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::resources::read_budget::Lease;

/// What was negotiated at CONNECT, for the rest of the connection.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub version: ProtocolVersion,
    pub client_id: ByteString,
    pub assigned_client_id: bool,
    pub clean_start: bool,
    /// Keep-alive in force, in seconds (0: none).
    pub keep_alive: u16,
    /// Server Keep Alive to announce, when it differs from the client's.
    pub server_keep_alive: Option<u16>,
    pub session_expiry: u32,
    /// Session Expiry to announce when the broker shortened the client's.
    pub announced_expiry: Option<u32>,
    /// The client's Receive Maximum, capped by ours: our outbound window.
    pub outbound_window: usize,
    /// The client's Maximum Packet Size (what we may send it).
    pub client_max_packet: usize,
    /// The client's Topic Alias Maximum (aliases we may assign).
    pub client_topic_alias_max: u16,
    pub request_problem_information: bool,
    pub request_response_information: bool,
}

impl Negotiated {
    /// 1.5 × the Keep Alive in force: how long the client may stay silent
    /// (MQTT-3.1.2-24). `None` without a keep-alive.
    pub fn silence_allowed(&self) -> Option<std::time::Duration> {
        (self.keep_alive > 0)
            .then(|| std::time::Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }
}

/// A refused CONNECT: the CONNACK code to send (if any) and why.
#[derive(Debug)]
pub struct Refusal {
    pub code: ReasonCode,
    pub reason: &'static str,
}

/// A first packet that is not an acceptable CONNECT.
#[derive(Debug)]
pub struct BadConnect {
    pub error: DecodeError,
    /// The protocol level the CONNECT announced, when the bytes got that
    /// far: it says how to answer.
    pub level: Option<u8>,
}

/// Reads the first packet, which must be CONNECT, within the connect
/// timeout. `Ok(None)` means the peer went away or sent nothing usable.
pub async fn read_connect(
    stream: &TcpStream,
    rbuf: &mut BytesMut,
    config: &Config,
    read_lease: &mut Lease,
) -> Result<Option<Box<Connect>>, BadConnect> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(config.limits.connect_timeout_secs);
    loop {
        // Read before decoding, which takes the packet out of the buffer.
        let level = connect_level(rbuf);
        // Any version will do here: CONNECT carries its own.
        let decoded = starling_codec::decode(
            rbuf,
            ProtocolVersion::V5,
            config.limits.max_packet_size as usize,
        )
        .map_err(|error| BadConnect { error, level })?;
        if let Some(packet) = decoded {
            return match packet {
                Packet::Connect(connect) => Ok(Some(connect)),
                // MQTT-3.1.0-1: the first packet must be CONNECT.
                _ => Err(BadConnect {
                    error: DecodeError::Protocol("first packet is not CONNECT"),
                    level: None,
                }),
            };
        }
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return Ok(None);
        }
        rbuf.reserve(1024);
        // A large CONNECT (a will of up to max_packet_size) draws on the
        // broker-wide budget like any large packet.
        if !read_lease.resize(rbuf.capacity().saturating_sub(super::READ_MAX)) {
            return Ok(None);
        }
        // The client waits for the CONNACK (or has sent all it had): the
        // connection's first wait goes to epoll, not to a read that finds
        // nothing.
        match super::read_into(stream, rbuf, true) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok(None),
        }
    }
}

/// The Protocol Level byte of the CONNECT at the start of `buf`, if that
/// much has arrived: after the fixed header and the protocol name.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (_, length_bytes) = starling_codec::read_remaining_length(buf).ok()??;
    let name_at = 1 + length_bytes;
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(name_at)?,
        *buf.get(name_at + 1)?,
    ]));
    buf.get(name_at + 2 + name_len).copied()
}

/// Checks a CONNECT against the specification and the broker's limits and
/// works out what the connection will run with.
pub fn negotiate(
    connect: &Connect,
    config: &Config,
    new_client_id: impl FnOnce() -> String,
) -> Result<Negotiated, Refusal> {
    let version = connect.protocol;
    let props = &connect.properties;

    // Enhanced authentication is not offered (MQTT 5.0 §4.12).
    if props.authentication_method.is_some() {
        return Err(Refusal {
            code: ReasonCode::BAD_AUTHENTICATION_METHOD,
            reason: "no authentication method is supported",
        });
    }

    let mut assigned = false;
    let client_id = if connect.client_id.is_empty() {
        match version {
            // MQTT 3.1 requires 1-23 characters.
            ProtocolVersion::V3_1 => {
                return Err(Refusal {
                    code: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    reason: "MQTT 3.1 requires a client identifier",
                });
            }
            // MQTT-3.1.3-8: zero-length only with clean session.
            ProtocolVersion::V3_1_1 if !connect.clean_start => {
                return Err(Refusal {
                    code: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    reason: "a zero-length client identifier needs clean session",
                });
            }
            _ => {
                assigned = true;
                ByteString::from(new_client_id())
            }
        }
    } else {
        // A copy, not a slice: the id lives as long as the session and must
        // not pin the buffer the CONNECT was read into.
        ByteString::from(&*connect.client_id)
    };

    if let Some(will) = &connect.will {
        // The will may become a retained message that every node of a
        // cluster reads back from etcd: it obeys the limits of any topic.
        if validate_topic_name(&will.topic).is_err() || !config.topic_limits().admit(&will.topic) {
            return Err(Refusal {
                code: ReasonCode::TOPIC_NAME_INVALID,
                reason: "invalid will topic",
            });
        }
        if !config.client_may_publish(&will.topic) {
            return Err(Refusal {
                code: ReasonCode::NOT_AUTHORIZED,
                reason: "clients may not leave wills on $ topics",
            });
        }
    }

    let (keep_alive, server_keep_alive) = if version.is_v5()
        && (connect.keep_alive > config.sessions.max_keep_alive
            || (connect.keep_alive == 0 && config.sessions.max_keep_alive < u16::MAX))
    {
        (
            config.sessions.max_keep_alive,
            Some(config.sessions.max_keep_alive),
        )
    } else {
        (connect.keep_alive, None)
    };

    let (session_expiry, announced_expiry) = if version.is_v5() {
        let asked = props.session_expiry_interval.unwrap_or(0);
        let granted = asked.min(config.sessions.max_session_expiry);
        (granted, (granted != asked).then_some(granted))
    } else if connect.clean_start {
        (0, None)
    } else {
        (config.sessions.max_session_expiry, None)
    };

    Ok(Negotiated {
        version,
        client_id,
        assigned_client_id: assigned,
        clean_start: connect.clean_start,
        keep_alive,
        server_keep_alive,
        session_expiry,
        announced_expiry,
        outbound_window: usize::from(
            props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(config.sessions.max_inflight),
        ),
        client_max_packet: props.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
        client_topic_alias_max: props.topic_alias_maximum.unwrap_or(0),
        request_problem_information: props.request_problem_information.unwrap_or(true),
        request_response_information: props.request_response_information.unwrap_or(false),
    })
}

/// The CONNACK for an accepted connection.
pub fn accepted(n: &Negotiated, config: &Config, session_present: bool) -> ConnAck {
    let mut properties = ConnAckProperties::default();
    if n.version.is_v5() {
        properties.receive_maximum = Some(config.sessions.max_inflight);
        properties.maximum_packet_size = Some(config.limits.max_packet_size);
        properties.topic_alias_maximum = Some(config.sessions.topic_alias_maximum);
        properties.server_keep_alive = n.server_keep_alive;
        properties.session_expiry_interval = n.announced_expiry;
        if n.assigned_client_id {
            properties.assigned_client_identifier = Some(n.client_id.clone());
        }
        if n.request_response_information {
            properties.response_information = Some(ByteString::from(format!(
                "starling/response/{}",
                n.client_id
            )));
        }
    }
    ConnAck {
        session_present,
        code: ReasonCode::SUCCESS,
        properties,
    }
}

/// The CONNACK for a refused connection, in the client's protocol version.
pub fn refused(
    version: ProtocolVersion,
    code: ReasonCode,
    reason: &'static str,
    problem_info: bool,
    server_reference: Option<&str>,
) -> ConnAck {
    let mut properties = ConnAckProperties::default();
    let code = if version.is_v5() {
        if problem_info {
            properties.reason_string = Some(ByteString::from_static(reason));
        }
        if code == ReasonCode::USE_ANOTHER_SERVER {
            properties.server_reference = server_reference.map(ByteString::from);
        }
        code
    } else {
        ReasonCode(code.to_v3_connack())
    };
    ConnAck {
        session_present: false,
        code,
        properties,
    }
}
