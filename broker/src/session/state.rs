//! The state of one MQTT session, independent of any connection.
//!
//! While a client is connected its connection task owns this value; while
//! it is away the registry keeps it. It is plain data (serde-serializable)
//! so that it can later be handed to another node.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use starling_codec::{ByteString, LastWill, QoS, SubscriptionOptions};

use crate::message::{Delivery, SessionId};

/// A subscription as the session remembers it (the router holds the index).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Where an outgoing QoS 1/2 message stands (MQTT 5.0 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundPhase {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    AwaitingPubRec,
    /// PUBREL sent, PUBCOMP awaited. The message itself is delivered.
    AwaitingPubComp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbound {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub phase: OutboundPhase,
    /// In flight from an earlier connection and not resent on this one
    /// yet: the client's Receive Maximum had no room for it on reconnect.
    /// Belongs to the connection, so it is not kept with the session.
    #[serde(skip)]
    pub awaiting_resend: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionState {
    pub id: SessionId,
    pub client_id: ByteString,
    /// Keyed by the filter exactly as subscribed (`$share/...` included).
    pub subscriptions: HashMap<ByteString, StoredSubscription>,
    /// Unacknowledged outgoing QoS 1/2 messages, in the order sent.
    pub outbound: VecDeque<Outbound>,
    next_packet_id: u16,
    /// Incoming QoS 2 packet ids whose PUBREL has not arrived: a PUBLISH
    /// with one of these ids is a retransmission and is not routed again.
    /// A list, not a set: it holds at most `max_awaiting_rel` ids (100 by
    /// default) and is empty for most sessions, so it should cost little.
    pub awaiting_rel: Vec<u16>,
    /// Seconds the session outlives its connection (0: ends with it).
    pub expiry_interval: u32,
    /// Boxed: most sessions have none, and the state is kept per client.
    pub will: Option<Box<LastWill>>,
}

impl SessionState {
    pub fn new(id: SessionId, client_id: ByteString, expiry_interval: u32) -> SessionState {
        SessionState {
            id,
            client_id,
            subscriptions: HashMap::new(),
            outbound: VecDeque::new(),
            next_packet_id: 1,
            awaiting_rel: Vec::new(),
            expiry_interval,
            will: None,
        }
    }

    /// PUBREL arrived for `packet_id` (or its PUBREC was an error): it is
    /// no longer awaited. False if it was not.
    pub fn release(&mut self, packet_id: u16) -> bool {
        match self.awaiting_rel.iter().position(|&id| id == packet_id) {
            Some(at) => {
                self.awaiting_rel.swap_remove(at);
                true
            }
            None => false,
        }
    }

    /// A packet identifier not used by any outgoing message in flight.
    /// The caller guarantees the window is below 65535 entries.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.outbound.iter().any(|o| o.packet_id == id) {
                return id;
            }
        }
    }

    /// Removes the in-flight message with `packet_id` in `phase`.
    pub fn complete(&mut self, packet_id: u16, phase: OutboundPhase) -> Option<Outbound> {
        let index = self
            .outbound
            .iter()
            .position(|o| o.packet_id == packet_id && o.phase == phase)?;
        self.outbound.remove(index)
    }

    /// Moves a QoS 2 message from "PUBLISH sent" to "PUBREL sent".
    pub fn released(&mut self, packet_id: u16) -> bool {
        match self
            .outbound
            .iter_mut()
            .find(|o| o.packet_id == packet_id && o.phase == OutboundPhase::AwaitingPubRec)
        {
            Some(o) => {
                o.phase = OutboundPhase::AwaitingPubComp;
                true
            }
            None => false,
        }
    }

    /// In-flight messages that still count against the client's Receive
    /// Maximum (all of them: MQTT 5.0 §4.9 counts until PUBCOMP).
    pub fn inflight(&self) -> usize {
        self.outbound.len()
    }

    pub fn phase_for(qos: QoS) -> OutboundPhase {
        if qos == QoS::ExactlyOnce {
            OutboundPhase::AwaitingPubRec
        } else {
            OutboundPhase::AwaitingPubAck
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = SessionState::new(SessionId(1), "c".into(), 0);
        s.next_packet_id = u16::MAX;
        assert_eq!(s.next_packet_id(), u16::MAX);
        assert_eq!(s.next_packet_id(), 1, "0 is never used");
    }
}
