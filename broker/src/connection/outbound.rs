//! Messages to the client: taking deliveries from the mailbox within the
//! inflight window, Topic Alias assignment, Maximum Packet Size, expiry,
//! and redelivery of unacknowledged messages on reconnect.

use std::time::Instant;

use starling_codec::{ByteString, MessageProperties, Packet, PubAck, PublishRef, QoS};
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
            let room = self
                .n
                .outbound_window
                .saturating_sub(self.session.inflight());
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
            Metrics::inc(&self.broker.metrics.dropped_expired);
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
        if self.n.client_max_packet != usize::MAX
            && starling_codec::publish_encoded_len(&publish, version) > self.n.client_max_packet
        {
            // MQTT-3.1.2-25: too large for this client; drop it for this
            // client only, keep the connection.
            Metrics::inc(&self.broker.metrics.dropped_too_large);
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
            });
        }
        self.broker.metrics.messages_sent.inc();
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

    /// Resends every unacknowledged message of a resumed session, in order:
    /// PUBLISH with DUP for those not yet received, PUBREL for those
    /// received but not completed (MQTT-4.4.0-1).
    pub(super) fn resend_inflight(&mut self) {
        let now = Instant::now();
        let version = self.n.version;
        let mut buf = std::mem::take(&mut self.wbuf);
        for outbound in &self.session.outbound {
            if outbound.phase == OutboundPhase::AwaitingPubComp {
                let pubrel = Packet::PubRel(PubAck::new(outbound.packet_id));
                let _ = starling_codec::encode(&pubrel, version, &mut buf);
                continue;
            }
            let message = &outbound.delivery.message;
            let properties =
                message.outbound_properties(version, now, &outbound.delivery.subscription_ids);
            let publish = PublishRef {
                dup: true,
                qos: outbound.delivery.qos,
                retain: outbound.delivery.retain,
                topic: &message.topic,
                packet_id: outbound.packet_id,
                properties: properties.boxed(),
                payload: &message.payload,
            };
            let _ = starling_codec::encode_publish(&publish, version, &mut buf);
        }
        self.wbuf = buf;
    }
}
