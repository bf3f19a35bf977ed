//! Packets from the client (MQTT 5.0 §3.3-§3.15, 3.1.1 §3.3-§3.14).

use std::sync::Arc;

use bytes::Bytes;
use starling_codec::topic::parse_filter;
use starling_codec::{
    ByteString, Packet, PubAck, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use tracing::debug;

use super::{Connection, Ending, HeldAck};
use crate::message::{Delivery, ForwardTicket, Message};
use crate::metrics::Metrics;
use crate::router::trie::Subscriber;
use crate::router::{Retained, ToRoute, route_name};
use crate::session::state::{OutboundPhase, StoredSubscription};

/// Closes with a protocol error (MQTT 5.0 §4.13.1).
fn protocol_error(why: &'static str) -> Ending {
    debug!(why, "protocol error");
    Ending::ServerClose(ReasonCode::PROTOCOL_ERROR)
}

impl Connection {
    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Ending> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubAck(ack) => {
                self.acknowledging(ack.packet_id);
                self.session
                    .complete(ack.packet_id, OutboundPhase::AwaitingPubAck);
                Ok(())
            }
            Packet::PubRec(rec) => {
                self.on_pubrec(rec);
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.session
                    .complete(comp.packet_id, OutboundPhase::AwaitingPubComp);
                Ok(())
            }
            Packet::PubRel(rel) => {
                let mut comp = PubAck::new(rel.packet_id);
                if !self.session.release(rel.packet_id) {
                    comp.code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubComp(comp));
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    // MQTT-3.14.2-2: a session that ends with its connection
                    // cannot be given an expiry at DISCONNECT.
                    if self.n.session_expiry == 0 && expiry != 0 {
                        return Err(protocol_error(
                            "session expiry set at DISCONNECT after 0 at CONNECT",
                        ));
                    }
                    self.expiry =
                        expiry.min(self.frontend.broker.config.sessions.max_session_expiry);
                }
                // Only a normal disconnection deletes the will
                // (MQTT-3.1.2-8, MQTT-3.14.4-3): 0x04 asks for it, and so
                // does any error code the client leaves with.
                Err(Ending::ClientDisconnect {
                    with_will: disconnect.code != ReasonCode::NORMAL_DISCONNECTION,
                })
            }
            // MQTT-3.1.0-2: a second CONNECT is a protocol error.
            Packet::Connect(_) => Err(protocol_error("second CONNECT")),
            // No authentication method was agreed, so AUTH is unexpected.
            Packet::Auth(_) => Err(protocol_error("AUTH without an authentication method")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(protocol_error("server-to-client packet sent by a client"))
            }
        }
    }

    pub(super) fn on_publish(&mut self, mut publish: Publish) -> Result<(), Ending> {
        if !publish.properties.subscription_identifiers.is_empty() {
            // MQTT-3.3.4-6: only the server sends Subscription Identifiers.
            return Err(protocol_error(
                "Subscription Identifier in a PUBLISH from a client",
            ));
        }
        let topic = self.resolve_topic(&mut publish)?;
        let config = &self.frontend.broker.config;
        if !config.topic_limits().admit(&topic) {
            return Err(Ending::ServerClose(ReasonCode::TOPIC_NAME_INVALID));
        }

        let qos = publish.qos;
        if qos == QoS::ExactlyOnce {
            if self.session.awaiting_rel.contains(&publish.packet_id) {
                // A retransmission (MQTT 5.0 §4.3.3): acknowledge, don't route.
                self.send(&Packet::PubRec(PubAck::new(publish.packet_id)));
                return Ok(());
            }
            // Receive Maximum (MQTT-3.3.4-7) and the awaiting-PUBREL bound.
            let limit = if self.n.version.is_v5() {
                usize::from(config.sessions.max_inflight).min(config.sessions.max_awaiting_rel)
            } else {
                config.sessions.max_awaiting_rel
            };
            if self.session.awaiting_rel.len() >= limit {
                return Err(Ending::ServerClose(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
            }
        }

        if !config.client_may_publish(&topic) {
            Metrics::inc(&self.frontend.broker.metrics.publishes_denied);
            return self.refuse_publish(qos, publish.packet_id, ReasonCode::NOT_AUTHORIZED);
        }

        self.frontend.broker.metrics.messages_received.inc();
        let retain = publish.retain;
        let packet_id = publish.packet_id;
        // A small payload sliced from a read buffer grown for a large
        // packet would keep that whole buffer alive for as long as it is
        // queued somewhere, counted as a few bytes: copied instead.
        let payload = if self.read_held > 0 && publish.payload.len() < super::READ_MAX {
            Bytes::copy_from_slice(&publish.payload)
        } else {
            publish.payload
        };
        let message = Message::new(
            topic,
            payload,
            qos,
            retain,
            publish.properties,
            Some(self.session.id),
        );
        // With route sync, the PUBACK of a retained message waits until
        // every node serves it, as a SUBACK waits for its routes: whoever
        // subscribes anywhere after the PUBACK gets this value.
        let mut retained_ticket = None;
        if retain {
            // The retained copy may live for days: don't let it pin the whole
            // read buffer its payload was sliced from.
            let stored = Message {
                payload: Bytes::copy_from_slice(&message.payload),
                topic: message.topic.clone(),
                qos: message.qos,
                retain: true,
                properties: message.properties.clone(),
                publisher: message.publisher,
                origin: None,
                seq: message.seq,
                expires_at: message.expires_at,
            };
            // The retained store is full (counted): a v5 publisher of QoS
            // 1/2 is told and nothing happens; others cannot be told, and
            // their message still goes to those subscribed now.
            let want_ticket =
                qos != QoS::AtMostOnce && self.frontend.broker.config.cluster.route_sync;
            match self
                .frontend
                .broker
                .router
                .retain(Arc::new(stored), want_ticket)
            {
                Retained::Stored(ticket) => retained_ticket = ticket,
                Retained::Refused if self.n.version.is_v5() && qos != QoS::AtMostOnce => {
                    return self.refuse_publish(qos, packet_id, ReasonCode::QUOTA_EXCEEDED);
                }
                Retained::Refused => {}
            }
        }
        // QoS 1/2 in a cluster: the ack waits until every node the message
        // went to has it (forward_ack), so a PUBACK means "in the cluster".
        let track = qos != QoS::AtMostOnce && self.frontend.broker.config.cluster.forward_ack;
        // In a cluster the router shares the message only if a subscriber
        // here gets it; alone, one always does or nobody wants it.
        let (message, publisher) = match self.frontend.broker.router.is_clustered() {
            true => (
                ToRoute::owned(message),
                Some(&mut **self.publishing.get_or_insert_with(Box::default)),
            ),
            false => (ToRoute::shared(Arc::new(message)), None),
        };
        let routed = self
            .frontend
            .broker
            .router
            .route_tracked(message, track, publisher);
        if let Some(node) = routed.congested {
            self.hold_back(node);
        }
        let ticket = ForwardTicket::join(routed.ticket, retained_ticket);
        let code = if routed.delivered == 0 && self.n.version.is_v5() {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.queue_ack(
                HeldAck::Publish {
                    packet_id,
                    code,
                    exactly_once: false,
                },
                ticket,
            ),
            QoS::ExactlyOnce => {
                self.session.awaiting_rel.push(packet_id);
                self.queue_ack(
                    HeldAck::Publish {
                        packet_id,
                        code,
                        exactly_once: true,
                    },
                    ticket,
                );
            }
        }
        Ok(())
    }

    /// Refuses a PUBLISH: nothing is routed or retained. v5 is told with
    /// `code` (a failure, which also ends a QoS 2 flow); 3.1.1 has no
    /// refusal, so it gets the usual acks and the message is dropped, as
    /// an ACL denial is handled (MQTT-3.3.5-2).
    fn refuse_publish(&mut self, qos: QoS, packet_id: u16, code: ReasonCode) -> Result<(), Ending> {
        let v5 = self.n.version.is_v5();
        let code = if v5 { code } else { ReasonCode::SUCCESS };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let exactly_once = qos == QoS::ExactlyOnce;
                if exactly_once && !v5 {
                    self.session.awaiting_rel.push(packet_id);
                }
                self.queue_ack(
                    HeldAck::Publish {
                        packet_id,
                        code,
                        exactly_once,
                    },
                    None,
                );
            }
        }
        Ok(())
    }

    /// Sends an ack now, or after the acks before it and its ticket:
    /// PUBACKs leave in the order the PUBLISHes came (MQTT-4.6.0-2).
    fn queue_ack(&mut self, ack: HeldAck, ticket: Option<Arc<ForwardTicket>>) {
        if ticket.is_none() && self.pending_acks.is_empty() {
            self.send_held(ack);
        } else {
            self.pending_acks
                .push_back(super::PendingAck { ack, ticket });
        }
    }

    /// Sends an ack; a SUBACK lets the retained messages held for it go.
    fn send_held(&mut self, ack: HeldAck) {
        match ack {
            HeldAck::Publish {
                packet_id,
                code,
                exactly_once,
            } => {
                let mut ack = PubAck::new(packet_id);
                ack.code = code;
                if exactly_once {
                    self.send(&Packet::PubRec(ack));
                } else {
                    self.send(&Packet::PubAck(ack));
                }
            }
            HeldAck::SubAck { packet, hold } => {
                self.send(&packet);
                if hold != 0 {
                    self.mailbox.release_hold(hold);
                }
            }
        }
    }

    /// Sends every ack at the front whose forward finished. A forward that
    /// failed (a node could not get the message) is reported to v5 clients
    /// with 0x80 and ends a QoS 2 flow; 3.1.1 has no way to say so.
    ///
    /// 3.1.1 has no failure code: a PUBACK there would say "delivered" for
    /// a message that was not. The failed message gets no ack, reading
    /// stops (`failing`), the acks behind it go out as their forwards
    /// finish, and then the connection is closed (MQTT-4.8.0-2 lets a
    /// server close on an error while handling a packet): the client
    /// sends the unacknowledged message again when it reconnects (a QoS 2
    /// one is routed anew: its packet id is released).
    pub(super) fn release_acks(&mut self) {
        while let Some(front) = self.pending_acks.front() {
            let delivered = match &front.ticket {
                Some(ticket) if !ticket.is_done() => return,
                Some(ticket) => ticket.delivered(),
                None => true,
            };
            let Some(super::PendingAck { mut ack, .. }) = self.pending_acks.pop_front() else {
                return;
            };
            if !delivered
                && let HeldAck::Publish {
                    packet_id,
                    code,
                    exactly_once,
                } = &mut ack
            {
                if *exactly_once {
                    self.session.release(*packet_id);
                }
                if !self.n.version.is_v5() {
                    self.failing = true;
                    continue;
                }
                *code = ReasonCode::UNSPECIFIED_ERROR;
            }
            self.send_held(ack);
        }
    }

    /// The topic of a PUBLISH after Topic Alias processing (MQTT 5.0
    /// §3.3.2.3.4), taken out of it: a clone would be a reference count
    /// taken and dropped again on the read buffer, for every publish.
    fn resolve_topic(&mut self, publish: &mut Publish) -> Result<ByteString, Ending> {
        let Some(alias) = publish.properties.topic_alias else {
            return Ok(std::mem::take(&mut publish.topic));
        };
        if alias == 0 || alias > self.frontend.broker.config.sessions.topic_alias_maximum {
            return Err(Ending::ServerClose(ReasonCode::TOPIC_ALIAS_INVALID));
        }
        if publish.topic.is_empty() {
            match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                Some(topic) => Ok(topic.clone()),
                None => Err(protocol_error("unknown topic alias")),
            }
        } else {
            // A copy: an alias lives as long as the connection and must not
            // pin the read buffer the topic was sliced from.
            self.aliases
                .get_or_insert_default()
                .inbound
                .insert(alias, ByteString::from(&*publish.topic));
            Ok(std::mem::take(&mut publish.topic))
        }
    }

    fn on_pubrec(&mut self, rec: PubAck) {
        self.acknowledging(rec.packet_id);
        if rec.code.is_success() {
            let mut rel = PubAck::new(rec.packet_id);
            if !self.session.released(rec.packet_id) {
                rel.code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
            }
            self.send(&Packet::PubRel(rel));
        } else {
            // The receiver refused the message; the flow ends here
            // (MQTT 5.0 §4.3.3).
            self.session
                .complete(rec.packet_id, OutboundPhase::AwaitingPubRec);
        }
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Ending> {
        let v5 = self.n.version.is_v5();
        let identifier = subscribe.properties.subscription_identifier;
        let config = &self.frontend.broker.config;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        // Filters whose retained messages this SUBSCRIBE sends, with the
        // subscription's QoS.
        let mut wants_retained: Vec<(&str, QoS)> = Vec::new();
        // Routes the SUBACK waits for (route sync).
        let mut routes: Vec<String> = Vec::new();
        for request in &subscribe.filters {
            let full = &request.filter;
            let parsed = match parse_filter(full) {
                Ok(parsed) => parsed,
                Err(error) => {
                    debug!(filter = %full, %error, "subscription refused");
                    codes.push(refusal(v5, ReasonCode::TOPIC_FILTER_INVALID));
                    continue;
                }
            };
            if parsed.share_group.is_some() && request.options.no_local {
                // MQTT-3.8.3-4.
                return Err(protocol_error("No Local on a shared subscription"));
            }
            if !config.topic_limits().admit(full) {
                codes.push(refusal(v5, ReasonCode::TOPIC_FILTER_INVALID));
                continue;
            }
            let is_new = !self.session.subscriptions.contains_key(full);
            if is_new
                && config.limits.max_subscriptions_per_client > 0
                && self.session.subscriptions.len() >= config.limits.max_subscriptions_per_client
            {
                Metrics::inc(&self.frontend.broker.metrics.subscriptions_refused);
                codes.push(refusal(v5, ReasonCode::QUOTA_EXCEEDED));
                continue;
            }
            let subscriber = Subscriber {
                mailbox: self.mailbox.clone(),
                options: request.options,
                identifier,
            };
            let existed =
                self.frontend
                    .broker
                    .router
                    .subscribe(&parsed, self.session.id, subscriber);
            // A copy, not a slice: the subscription lives as long as the
            // session and must not pin the buffer the SUBSCRIBE was read
            // into (a 59 KB filter held a 300 KB buffer).
            self.session.subscriptions.insert(
                ByteString::from(&**full),
                StoredSubscription {
                    options: request.options,
                    identifier,
                },
            );
            codes.push(ReasonCode(request.options.qos.as_u8()));
            if config.cluster.route_sync {
                routes.push(route_name(&parsed));
            }

            // Retained messages at subscribe (MQTT 5.0 §3.3.1.3, §3.8.3.1);
            // never for shared subscriptions (MQTT-3.8.4-?/§4.8.2).
            let send_retained = parsed.share_group.is_none()
                && match request.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                wants_retained.push((parsed.filter, request.options.qos));
            }
        }
        let mut ack = SubAck {
            packet_id: subscribe.packet_id,
            codes,
            ..SubAck::default()
        };
        // MQTT-3.1.2-29: reason strings only when the client did not opt out.
        if v5 && self.n.request_problem_information && ack.codes.iter().any(|c| !c.is_success()) {
            ack.properties.reason_string = Some(ByteString::from_static(
                "one or more filters were refused (invalid filter, limit, or quota)",
            ));
        }
        let ticket = if routes.is_empty() {
            None
        } else {
            self.frontend.broker.router.sync_routes(&routes)
        };
        // Retained messages follow the SUBACK, through the mailbox so that
        // its bounds and the inflight window apply. No live message may
        // overtake an older retained one: they are read here, and checked
        // again under the mailbox's lock (see `Mailbox::push_retained`).
        let router = &self.frontend.broker.router;
        let read_at = router.retained_version();
        let mut picked: Vec<(Arc<Message>, QoS)> = Vec::new();
        let mut messages = Vec::new();
        for &(filter, qos) in &wants_retained {
            router.retained_matching(filter, &mut messages);
            picked.extend(messages.drain(..).map(|message| (message, qos)));
        }
        let held = ticket.is_some() || !self.pending_acks.is_empty();
        // A topic with no retained message at the read needs nothing: one
        // stored since reaches the subscription live.
        let hold = if picked.is_empty() {
            0
        } else {
            let (hold, dropped) = self.mailbox.push_retained(held, || {
                if router.retained_version() != read_at {
                    // Changed meanwhile: take each topic's current message.
                    router.refresh_retained(&mut picked, |(message, _)| message);
                }
                picked
                    .into_iter()
                    .map(|(message, qos)| Delivery {
                        qos: message.qos.min(qos),
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                        share: None,
                        suback_hold: 0,
                        message,
                    })
                    .collect()
            });
            Metrics::add(
                &self.frontend.broker.metrics.dropped_queue_full,
                dropped as u64,
            );
            hold
        };
        let packet = Box::new(Packet::SubAck(ack));
        self.queue_ack(HeldAck::SubAck { packet, hold }, ticket);
        Ok(())
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        for full in &unsubscribe.filters {
            let code = match parse_filter(full) {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(parsed) => {
                    let removed = self.session.subscriptions.remove(full).is_some();
                    let existed = self
                        .frontend
                        .broker
                        .router
                        .unsubscribe(&parsed, self.session.id);
                    if removed || existed {
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::NO_SUBSCRIPTION_EXISTED
                    }
                }
            };
            codes.push(code);
        }
        let ack = UnsubAck {
            packet_id: unsubscribe.packet_id,
            codes,
            ..UnsubAck::default()
        };
        self.send(&Packet::UnsubAck(ack));
    }
}

/// A failed subscription's code: the v5 reason, or 3.1.1's 0x80.
fn refusal(v5: bool, code: ReasonCode) -> ReasonCode {
    if v5 { code } else { ReasonCode(0x80) }
}
