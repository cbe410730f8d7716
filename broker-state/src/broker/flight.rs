//! Acknowledgements of outbound QoS 1/2 flows (PUBACK, PUBREC, PUBCOMP) and of
//! inbound QoS 2 (PUBREL), each checked against the flow it names (section 4.3).

use super::*;

impl Broker {
    /// Where the outbound flow `id` names is in the session's window, and its QoS
    /// and state, if one is in flight. Acks usually come in order: the entry is at
    /// or near the front.
    fn flight_of(&self, sk: SessionKey, id: PacketId) -> Option<(usize, (QoS, FlightState))> {
        let s = self.sessions.get(sk)?;
        let i = s.flows.inflight.iter().position(|f| f.packet_id == id)?;
        let f = &s.flows.inflight[i];
        Some((i, (f.msg.qos, f.state)))
    }

    // An acknowledgement naming an id that is not in flight is ignored (a late
    // duplicate after a reconnect, as Mosquitto does); one that names an id whose
    // flow it does not fit is a Protocol Error (section 4.3, [MQTT-4.3.2-5],
    // [MQTT-4.3.3-9]): PUBACK for QoS 2, PUBREC or PUBCOMP for QoS 1, PUBCOMP before
    // the PUBREL was sent.

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2, after the PUBREL): the end of the flow of
    /// the id it names, if that flow is in the state `fits` says.
    pub(super) fn on_flow_end(
        &mut self,
        now: Now,
        k: ConnKey,
        sk: SessionKey,
        id: PacketId,
        fits: (QoS, FlightState),
    ) {
        match self.flight_of(sk, id) {
            None => {}
            Some((at, flight)) if flight == fits => {
                self.remove_inflight_at(sk, at);
                self.fill_window(now, sk);
            }
            Some(_) => self.violation(now, k, ReasonCode::ProtocolError),
        }
    }

    pub(super) fn on_pubrec(&mut self, now: Now, k: ConnKey, sk: SessionKey, a: PubAck) {
        let mark = self.durability.emitted;
        match self.flight_of(sk, a.packet_id) {
            // Section 4.3.3: a PUBREC with a failure code (>= 0x80) ends the flow, and
            // no PUBREL follows it, not even one with 0x92.
            None if !a.reason_code.is_success() => {}
            None => {
                let mut rel = PubAck::new(a.packet_id);
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                rel.properties = self.ack_properties(k, rel.reason_code);
                self.push_out(k, Packet::PubRel(rel));
            }
            Some((at, (QoS::ExactlyOnce, state))) => {
                if !a.reason_code.is_success() {
                    if state == FlightState::Published {
                        self.remove_inflight_at(sk, at);
                        self.fill_window(now, sk);
                    } else {
                        // The message was received (PUBREC 0x00 came before): a
                        // failure now contradicts the flow.
                        self.violation(now, k, ReasonCode::ProtocolError);
                    }
                    return;
                }
                // The message is delivered; only the id matters until PUBCOMP (the
                // entry keeps its reference to the message until then). A repeated
                // PUBREC gets the PUBREL again.
                if let Some(s) = self.sessions.get_mut(sk) {
                    let stored = self.config.store_effects && s.persistent();
                    let mut released = None;
                    if let Some(f) = s.flows.inflight.get_mut(at) {
                        if f.state == FlightState::Published && stored {
                            released = Some(f.msg.seq);
                        }
                        f.state = FlightState::Released;
                    }
                    if let Some(seq) = released {
                        let client_id = s.client_id.clone();
                        self.emit_store(StoreOp::MessageReleased { client_id, seq });
                    }
                }
                // Once the release is durable: a PUBREL sent before would let a
                // restart resend the PUBLISH the receiver has already released.
                self.push_ack(k, Packet::PubRel(PubAck::new(a.packet_id)), mark);
            }
            Some(_) => self.violation(now, k, ReasonCode::ProtocolError),
        }
    }

    pub(super) fn on_pubrel(&mut self, k: ConnKey, sk: SessionKey, a: PubAck) {
        let mark = self.durability.emitted;
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let mut comp = PubAck::new(a.packet_id);
        if !s.flows.incoming_qos2.release(a.packet_id) {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        } else if self.config.store_effects && s.persistent() {
            let client_id = s.client_id.clone();
            self.emit_store(StoreOp::Qos2Released {
                client_id,
                packet_id: a.packet_id.get(),
            });
        }
        // [MQTT-3.7.2.2] a Reason String with the error, as on every negative ack.
        if !comp.reason_code.is_success() {
            comp.properties = self.ack_properties(k, comp.reason_code);
        }
        self.push_ack(k, Packet::PubComp(comp), mark);
    }

    pub(super) fn remove_inflight(&mut self, sk: SessionKey, id: mqtt_proto::PacketId) {
        let at = self
            .sessions
            .get(sk)
            .and_then(|s| s.flows.inflight.iter().position(|f| f.packet_id == id));
        if let Some(at) = at {
            self.remove_inflight_at(sk, at);
        }
    }

    /// Ends the flow at `at` in the session's window: its reference to the message
    /// goes back, and a persistent session's store forgets the message.
    fn remove_inflight_at(&mut self, sk: SessionKey, at: usize) {
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let Some(f) = s.flows.inflight.remove(at) else {
            return;
        };
        self.msgs.release(f.msg.msg);
        if self.config.store_effects && s.persistent() {
            let client_id = s.client_id.clone();
            self.store_remove(true, client_id, f.msg.seq);
        }
    }
}
