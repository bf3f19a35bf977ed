//! Messages to the client: taking deliveries from the mailbox within the
//! inflight window, Topic Alias assignment, Maximum Packet Size, expiry,
//! and redelivery of unacknowledged messages on reconnect.

use std::time::Instant;

use bytes::BytesMut;
use starling_codec::{
    ByteString, MessageProperties, Packet, ProtocolVersion, PubAck, PublishRef, QoS,
};
use tracing::{debug, trace};

use super::{BATCH, Connection, WRITE_HIGH_WATER};
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::session::state::{Outbound, OutboundPhase, SessionState};

impl Connection {
    /// Moves deliveries from the mailbox to the socket buffer while the
    /// inflight window and the write buffer have room. Returns true when it
    /// stopped because the write buffer is full, with mail possibly left:
    /// the caller must come back once the buffer drained, as no
    /// notification will say so.
    pub(super) fn deliver(&mut self) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut backlog = false;
        loop {
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                backlog = true;
                break;
            }
            // Messages still waiting to be resent are in flight but not
            // yet on this connection: they go first, and new mail only
            // once none is left.
            let sent = self
                .session
                .inflight()
                .saturating_sub(usize::from(self.awaiting_resend));
            let mut room = self.n.outbound_window.saturating_sub(sent);
            if self.awaiting_resend > 0 {
                room = self.resend_waiting(room);
                if self.awaiting_resend > 0 {
                    break;
                }
            }
            self.mailbox.pop_batch(&mut scratch, BATCH, room);
            if scratch.is_empty() {
                break;
            }
            let now = Instant::now();
            let full = scratch.len() == BATCH;
            let mut slot_freed = false;
            for delivery in scratch.drain(..) {
                let qos = delivery.qos;
                if !self.send_delivery(delivery, now) && qos != QoS::AtMostOnce {
                    slot_freed = true;
                }
            }
            // A QoS 1/2 delivery dropped (expired, too large) was counted
            // against the window but never entered it: more may fit now,
            // and no acknowledgement will come to say so.
            if !full && !slot_freed {
                break;
            }
        }
        self.scratch = scratch;
        backlog
    }

    /// Writes one delivery. False when it was dropped instead (expired, or
    /// too large for the client): it takes no inflight slot.
    fn send_delivery(&mut self, delivery: Delivery, now: Instant) -> bool {
        let message = &delivery.message;
        if message.is_expired(now) {
            Metrics::inc(&self.frontend.broker.metrics.dropped_expired);
            return false;
        }
        let version = self.n.version;
        let mut properties = message.outbound_properties(version, now, &delivery.subscription_ids);
        let (aliased, new_alias) = self.apply_topic_alias(&message.topic, &mut properties);
        // Encoded from the shared message, borrowed: a `Publish` of its
        // own would take and drop a reference on the topic's and the
        // payload's buffer for every delivery.
        let mut publish = PublishRef {
            dup: false,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: if aliased { "" } else { &message.topic },
            packet_id: 0,
            properties: properties.boxed(),
            payload: &message.payload,
        };
        // The packet id is filled in below; it does not change the size.
        if !fits_client(&publish, version, self.n.client_max_packet) {
            // MQTT-3.1.2-25: too large for this client; drop it for this
            // client only, keep the connection.
            Metrics::inc(&self.frontend.broker.metrics.dropped_too_large);
            self.forget_alias(new_alias);
            trace!(client_id = %self.n.client_id, "message exceeds client maximum packet size");
            return false;
        }
        if delivery.qos != QoS::AtMostOnce {
            publish.packet_id = self.session.next_packet_id();
        }
        if let Err(error) = starling_codec::encode_publish(&publish, version, &mut self.wbuf) {
            // Not for a message this broker accepted (its limits are the
            // codec's); dropped rather than left in the window waiting for
            // an acknowledgement that cannot come.
            debug!(peer = %self.peer, %error, "cannot encode PUBLISH");
            self.forget_alias(new_alias);
            return false;
        }
        let packet_id = publish.packet_id;
        if delivery.qos != QoS::AtMostOnce {
            self.session.outbound.push_back(Outbound {
                packet_id,
                phase: SessionState::phase_for(delivery.qos),
                delivery,
                awaiting_resend: false,
            });
        }
        self.frontend.broker.metrics.messages_sent.inc();
        true
    }

    /// Takes back an alias made for a PUBLISH that was not sent: the client
    /// never learnt it.
    fn forget_alias(&mut self, new_alias: Option<ByteString>) {
        if let (Some(topic), Some(aliases)) = (new_alias, self.aliases.as_mut()) {
            aliases.outbound.remove(&topic);
        }
    }

    /// Sets a Topic Alias for `topic` in `properties` when the client
    /// accepts aliases (MQTT 5.0 §3.3.2.3.4). Returns whether the topic can
    /// be left out (an alias it already knows), and the topic if a new
    /// alias was made.
    fn apply_topic_alias(
        &mut self,
        topic: &ByteString,
        properties: &mut MessageProperties,
    ) -> (bool, Option<ByteString>) {
        let max = self.n.client_topic_alias_max;
        if max == 0 || !self.n.version.is_v5() {
            return (false, None);
        }
        let aliases = self.aliases.get_or_insert_default();
        if let Some(&alias) = aliases.outbound.get(topic) {
            properties.make_mut().topic_alias = Some(alias);
            return (true, None);
        }
        let next = aliases.outbound.len() + 1;
        if next > usize::from(max) {
            return (false, None);
        }
        let alias = next as u16;
        aliases.outbound.insert(topic.clone(), alias);
        properties.make_mut().topic_alias = Some(alias);
        (false, Some(topic.clone()))
    }

    /// Resends the unacknowledged messages of a resumed session, in order
    /// (MQTT-4.4.0-1): a PUBREL for each one received but not completed,
    /// the PUBLISH with DUP for the others, as many as the Receive Maximum
    /// given this time allows (MQTT-4.9.0-2; it may be smaller than the
    /// number in flight). The rest are marked `awaiting_resend` and go out
    /// as acknowledgements make room, ahead of any new message.
    pub(super) fn resend_inflight(&mut self) {
        let now = Instant::now();
        let window = self.n.outbound_window;
        // Released messages count until their PUBCOMP, whatever their place.
        let mut used = self
            .session
            .outbound
            .iter()
            .filter(|o| o.phase == OutboundPhase::AwaitingPubComp)
            .count();
        let mut buf = std::mem::take(&mut self.wbuf);
        let mut dropped = Vec::new();
        let mut waiting: u16 = 0;
        for outbound in &mut self.session.outbound {
            // Marks left by an earlier connection that ended first do not
            // count here.
            outbound.awaiting_resend = false;
            if outbound.phase == OutboundPhase::AwaitingPubComp {
                let pubrel = Packet::PubRel(PubAck::new(outbound.packet_id));
                let _ = starling_codec::encode(&pubrel, self.n.version, &mut buf);
            } else if used >= window {
                outbound.awaiting_resend = true;
                // At most 65,535 in flight: one per packet identifier.
                waiting = waiting.saturating_add(1);
            } else if encode_resent(
                outbound,
                self.n.version,
                self.n.client_max_packet,
                now,
                &mut buf,
            ) {
                used += 1;
            } else {
                dropped.push(outbound.packet_id);
            }
        }
        self.wbuf = buf;
        self.awaiting_resend = waiting;
        for packet_id in dropped {
            self.drop_in_flight(packet_id);
        }
    }

    /// Resends messages marked `awaiting_resend`, in order, while the
    /// window has `room`; returns the room left.
    fn resend_waiting(&mut self, mut room: usize) -> usize {
        let now = Instant::now();
        let mut buf = std::mem::take(&mut self.wbuf);
        let mut dropped = Vec::new();
        for outbound in &mut self.session.outbound {
            if room == 0 || self.awaiting_resend == 0 {
                break;
            }
            if !outbound.awaiting_resend {
                continue;
            }
            outbound.awaiting_resend = false;
            self.awaiting_resend -= 1;
            if encode_resent(
                outbound,
                self.n.version,
                self.n.client_max_packet,
                now,
                &mut buf,
            ) {
                room -= 1;
            } else {
                dropped.push(outbound.packet_id);
            }
        }
        self.wbuf = buf;
        for packet_id in dropped {
            self.drop_in_flight(packet_id);
        }
        room
    }

    /// A message in flight that can no longer be sent to this client:
    /// dropped as if its delivery had completed (MQTT-3.1.2-25).
    fn drop_in_flight(&mut self, packet_id: u16) {
        Metrics::inc(&self.frontend.broker.metrics.dropped_too_large);
        trace!(
            client_id = %self.n.client_id,
            packet_id,
            "in-flight message exceeds client maximum packet size"
        );
        self.session.outbound.retain(|o| o.packet_id != packet_id);
    }

    /// The client acknowledges `packet_id` (PUBACK, PUBREC): called before
    /// the session's state moves on. A message it had received before
    /// reconnecting may be acknowledged before it was resent; it then
    /// no longer waits to be.
    pub(super) fn acknowledging(&mut self, packet_id: u16) {
        if self.awaiting_resend == 0 {
            return;
        }
        if let Some(outbound) = self
            .session
            .outbound
            .iter_mut()
            .find(|o| o.packet_id == packet_id && o.awaiting_resend)
        {
            outbound.awaiting_resend = false;
            self.awaiting_resend -= 1;
        }
    }
}

/// Encodes `outbound`'s PUBLISH again, with DUP, into `buf`; false when it
/// no longer fits the client's Maximum Packet Size (it may have changed
/// with the reconnect) and was not encoded.
fn encode_resent(
    outbound: &Outbound,
    version: ProtocolVersion,
    client_max_packet: usize,
    now: Instant,
    buf: &mut BytesMut,
) -> bool {
    let message = &outbound.delivery.message;
    let properties = message.outbound_properties(version, now, &outbound.delivery.subscription_ids);
    let publish = PublishRef {
        dup: true,
        qos: outbound.delivery.qos,
        retain: outbound.delivery.retain,
        topic: &message.topic,
        packet_id: outbound.packet_id,
        properties: properties.boxed(),
        payload: &message.payload,
    };
    fits_client(&publish, version, client_max_packet)
        && starling_codec::encode_publish(&publish, version, buf).is_ok()
}

/// Whether `publish` fits the client's Maximum Packet Size
/// (MQTT-3.1.2-24); `usize::MAX` when it set none.
fn fits_client(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    client_max_packet: usize,
) -> bool {
    client_max_packet == usize::MAX
        || starling_codec::publish_encoded_len(publish, version) <= client_max_packet
}
