//! MQTT packets as the rest of the crate sees them, whatever the protocol
//! version. Bytes are read and written by `rumqttc`'s codecs
//! (`mqttbytes::v4` for 3.1.1, `v5::mqttbytes::v5` for 5); this module only
//! translates between their types and ours, so the session logic is
//! written once.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use crate::MqttError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub version: Version,
    pub client_id: String,
    /// 3.1.1's clean session, 5's clean start: drop what a previous
    /// connection left.
    pub clean_start: bool,
    /// Whether the session outlives this connection (3.1.1: not clean; 5:
    /// a session expiry interval above zero).
    pub keep_session: bool,
    /// How long a kept session waits for its client after a disconnect:
    /// None for ever (3.1.1, and 5's 0xFFFFFFFF).
    pub session_expiry: Option<std::time::Duration>,
    pub keep_alive_secs: u16,
    /// MQTT 5: the most unacknowledged QoS 1 PUBLISHes the client takes.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the client takes.
    pub max_packet_size: Option<u32>,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPublish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    /// MQTT 5 user properties, kept as record headers.
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Publish(InPublish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        publish_will: bool,
    },
    /// A packet only a server sends, or a second CONNECT.
    Unexpected(&'static str),
}

/// An MQTT 5 PUBACK's or PUBREC's reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Success,
    /// 0x90: the topic cannot be a fluxo topic (or it does not exist and
    /// topics are not created on demand).
    TopicNameInvalid,
    /// 0x80: the record could not be written (too large, disk failure).
    UnspecifiedError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnAckCode {
    Accepted,
    BadUserNameOrPassword,
    UnsupportedProtocolVersion,
    ClientIdRejected,
}

/// Why the server ends a connection (sent as an MQTT 5 DISCONNECT; a 3.1.1
/// connection is just closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    SessionTakenOver,
    KeepAliveTimeout,
    ProtocolError,
    MalformedPacket,
    PacketTooLarge,
    ServerShuttingDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck {
        session_present: bool,
        code: ConnAckCode,
        assigned_client_id: Option<String>,
        receive_maximum: u16,
        max_packet_size: u32,
    },
    /// MQTT 3.1.1 has no negative acknowledgement: only `Success` is
    /// ever sent to its clients.
    PubAck {
        pkid: u16,
        reason: AckReason,
    },
    PubRec {
        pkid: u16,
        reason: AckReason,
    },
    PubComp(u16),
    /// One entry per filter: the QoS granted, or None for a failure.
    SubAck {
        pkid: u16,
        granted: Vec<Option<u8>>,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
    Publish(OutPublish),
    PingResp,
    Disconnect(DisconnectReason),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutPublish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
}

/// The protocol level byte of a complete CONNECT frame at the start of
/// `buf`, read before choosing a codec: 4 is 3.1.1, 5 is 5. The frame is
/// byte 1, the remaining length (1 to 4 bytes, the last below 0x80), the
/// protocol name as a length-prefixed string ("MQTT") and the level.
fn protocol_level(frame: &[u8]) -> Option<u8> {
    let length_bytes = frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_at = 1 + length_bytes;
    let name_len = u16::from_be_bytes([*frame.get(name_at)?, *frame.get(name_at + 1)?]) as usize;
    frame.get(name_at + 2 + name_len).copied()
}

/// Reads the first packet of a connection, which must be a CONNECT.
/// `Ok(None)`: more bytes are needed.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Option<ConnectRequest>, MqttError> {
    // Judge the first byte alone: a client speaking another protocol
    // (HTTP, TLS) is closed at once rather than waited for until its
    // "remaining length" arrives.
    if buf.first().is_some_and(|b| *b != 0x10) {
        return Err(MqttError::Protocol(
            "the first packet must be CONNECT".into(),
        ));
    }
    let header = match rumqttc::mqttbytes::check(buf.iter(), max) {
        Ok(h) => h,
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
            return Err(MqttError::PacketTooLarge { max })
        }
        Err(e) => return Err(e.into()),
    };
    if header.packet_type()? != rumqttc::mqttbytes::PacketType::Connect {
        return Err(MqttError::Protocol(
            "the first packet must be CONNECT".into(),
        ));
    }
    match protocol_level(&buf[..header.frame_length()]) {
        Some(4) => match v4::Packet::read(buf, max)? {
            v4::Packet::Connect(c) => Ok(Some(connect_v4(c))),
            _ => Err(MqttError::Protocol(
                "the first packet must be CONNECT".into(),
            )),
        },
        Some(5) => match v5::Packet::read(buf, Some(max as u32))? {
            v5::Packet::Connect(c, will, login) => Ok(Some(connect_v5(c, will, login)?)),
            _ => Err(MqttError::Protocol(
                "the first packet must be CONNECT".into(),
            )),
        },
        Some(level) => Err(MqttError::UnsupportedProtocol(level)),
        None => Err(MqttError::Malformed(
            "CONNECT without a protocol level".into(),
        )),
    }
}

fn connect_v4(c: v4::Connect) -> ConnectRequest {
    ConnectRequest {
        version: Version::V311,
        client_id: c.client_id,
        clean_start: c.clean_session,
        keep_session: !c.clean_session,
        session_expiry: None,
        keep_alive_secs: c.keep_alive,
        receive_maximum: None,
        max_packet_size: None,
        will: c.last_will.map(|w| Will {
            topic: w.topic,
            payload: w.message,
        }),
        username: c.login.as_ref().map(|l| l.username.clone()),
        password: c.login.map(|l| l.password),
    }
}

fn connect_v5(
    c: v5::Connect,
    will: Option<v5::LastWill>,
    login: Option<v5::Login>,
) -> Result<ConnectRequest, MqttError> {
    let props = c.properties.unwrap_or_default();
    let will = match will {
        Some(w) => Some(Will {
            topic: String::from_utf8(w.topic.to_vec())
                .map_err(|_| MqttError::Malformed("the will topic is not UTF-8".into()))?,
            payload: w.message,
        }),
        None => None,
    };
    Ok(ConnectRequest {
        version: Version::V5,
        client_id: c.client_id,
        clean_start: c.clean_start,
        keep_session: props.session_expiry_interval.unwrap_or(0) > 0,
        session_expiry: match props.session_expiry_interval {
            Some(u32::MAX) => None,
            interval => Some(std::time::Duration::from_secs(interval.unwrap_or(0) as u64)),
        },
        keep_alive_secs: c.keep_alive,
        receive_maximum: props.receive_maximum,
        max_packet_size: props.max_packet_size,
        will,
        username: login.as_ref().map(|l| l.username.clone()),
        password: login.map(|l| l.password),
    })
}

/// Reads the next packet after CONNECT. `Ok(None)`: more bytes are needed.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Inbound>, MqttError> {
    match version {
        Version::V311 => read_v4(buf, max),
        Version::V5 => read_v5(buf, max),
    }
}

fn read_v4(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, MqttError> {
    use rumqttc::mqttbytes::Error;
    let packet = match v4::Packet::read(buf, max) {
        Ok(p) => p,
        Err(Error::InsufficientBytes(_)) => return Ok(None),
        Err(Error::PayloadSizeLimitExceeded(_)) => return Err(MqttError::PacketTooLarge { max }),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(match packet {
        v4::Packet::Publish(p) => Inbound::Publish(InPublish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            user_properties: Vec::new(),
        }),
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect {
            publish_will: false,
        },
        v4::Packet::Connect(_) => Inbound::Unexpected("a second CONNECT"),
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }))
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, MqttError> {
    use rumqttc::v5::mqttbytes::Error;
    // The codec refuses packets with no remaining length other than the
    // pings, but a DISCONNECT of two bytes is valid MQTT 5: reason 0x00.
    if let Ok(header) = v5::check(buf.iter(), Some(max as u32)) {
        if header.frame_length() == 2
            && header.packet_type().ok() == Some(v5::PacketType::Disconnect)
        {
            let _ = buf.split_to(2);
            return Ok(Some(Inbound::Disconnect {
                publish_will: false,
            }));
        }
    }
    let packet = match v5::Packet::read(buf, Some(max as u32)) {
        Ok(p) => p,
        Err(Error::InsufficientBytes(_)) => return Ok(None),
        Err(Error::PayloadSizeLimitExceeded { .. }) => {
            return Err(MqttError::PacketTooLarge { max })
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(match packet {
        v5::Packet::Publish(p) => {
            let props = p.properties.unwrap_or_default();
            if props.topic_alias.is_some() {
                // CONNACK allows no aliases (topic alias maximum 0).
                return Err(MqttError::Protocol("topic alias without a maximum".into()));
            }
            Inbound::Publish(InPublish {
                topic: String::from_utf8(p.topic.to_vec())
                    .map_err(|_| MqttError::Malformed("the topic is not UTF-8".into()))?,
                payload: p.payload,
                qos: p.qos as u8,
                pkid: p.pkid,
                user_properties: props.user_properties,
            })
        }
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            publish_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::Connect(..) => Inbound::Unexpected("a second CONNECT"),
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH (no authentication method is offered)"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    }))
}

/// Appends `packet` to `buf`. `max_out` is the client's maximum packet
/// size (MQTT 5): a larger packet is an error and nothing is written.
pub fn write(
    version: Version,
    packet: &Outbound,
    buf: &mut BytesMut,
    max_out: Option<u32>,
) -> Result<(), MqttError> {
    match version {
        Version::V311 => {
            if let Some(p) = to_v4(packet) {
                p.write(buf, max_out.map_or(usize::MAX, |m| m as usize))?;
            }
        }
        Version::V5 => {
            to_v5(packet).write(buf, max_out)?;
        }
    }
    Ok(())
}

fn qos_v4(qos: u8) -> rumqttc::mqttbytes::QoS {
    match qos {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos_v5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// None: MQTT 3.1.1 has no such packet from a server (DISCONNECT).
fn to_v4(packet: &Outbound) -> Option<v4::Packet> {
    Some(match packet {
        Outbound::ConnAck {
            session_present,
            code,
            ..
        } => v4::Packet::ConnAck(v4::ConnAck::new(
            match code {
                ConnAckCode::Accepted => v4::ConnectReturnCode::Success,
                ConnAckCode::BadUserNameOrPassword => v4::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::UnsupportedProtocolVersion => {
                    v4::ConnectReturnCode::RefusedProtocolVersion
                }
                ConnAckCode::ClientIdRejected => v4::ConnectReturnCode::BadClientId,
            },
            // The spec: a refused CONNECT's CONNACK says no session.
            *session_present && *code == ConnAckCode::Accepted,
        )),
        Outbound::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Outbound::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(*pkid)),
        Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(*pkid)),
        Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
            *pkid,
            granted
                .iter()
                .map(|g| match g {
                    Some(q) => v4::SubscribeReasonCode::Success(qos_v4(*q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
        Outbound::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_v4(p.qos),
            retain: false,
            topic: p.topic.clone(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Outbound::PingResp => v4::Packet::PingResp,
        Outbound::Disconnect(_) => return None,
    })
}

fn to_v5(packet: &Outbound) -> v5::Packet {
    match packet {
        Outbound::ConnAck {
            session_present,
            code,
            assigned_client_id,
            receive_maximum,
            max_packet_size,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present: *session_present && *code == ConnAckCode::Accepted,
            code: match code {
                ConnAckCode::Accepted => v5::ConnectReturnCode::Success,
                ConnAckCode::BadUserNameOrPassword => v5::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::UnsupportedProtocolVersion => {
                    v5::ConnectReturnCode::UnsupportedProtocolVersion
                }
                ConnAckCode::ClientIdRejected => v5::ConnectReturnCode::ClientIdentifierNotValid,
            },
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(*receive_maximum),
                max_qos: None,
                // Retained messages are not kept (see the crate docs).
                retain_available: Some(0),
                max_packet_size: Some(*max_packet_size),
                assigned_client_identifier: assigned_client_id.clone(),
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outbound::PubAck { pkid, reason } => v5::Packet::PubAck(v5::PubAck {
            pkid: *pkid,
            reason: match reason {
                AckReason::Success => v5::PubAckReason::Success,
                AckReason::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
                AckReason::UnspecifiedError => v5::PubAckReason::UnspecifiedError,
            },
            properties: None,
        }),
        Outbound::PubRec { pkid, reason } => v5::Packet::PubRec(v5::PubRec {
            pkid: *pkid,
            reason: match reason {
                AckReason::Success => v5::PubRecReason::Success,
                AckReason::TopicNameInvalid => v5::PubRecReason::TopicNameInvalid,
                AckReason::UnspecifiedError => v5::PubRecReason::UnspecifiedError,
            },
            properties: None,
        }),
        Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(*pkid, None)),
        Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
            pkid: *pkid,
            return_codes: granted
                .iter()
                .map(|g| match g {
                    Some(q) => v5::SubscribeReasonCode::Success(qos_v5(*q)),
                    None => v5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: *pkid,
            reasons: vec![v5::UnsubAckReason::Success; *filters],
            properties: None,
        }),
        Outbound::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: qos_v5(p.qos),
            retain: false,
            topic: Bytes::from(p.topic.clone().into_bytes()),
            pkid: p.pkid,
            payload: p.payload.clone(),
            properties: None,
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outbound::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect::new(match reason {
            DisconnectReason::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
            DisconnectReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
            DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
            DisconnectReason::MalformedPacket => v5::DisconnectReasonCode::MalformedPacket,
            DisconnectReason::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
            DisconnectReason::ServerShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_connect(id: &str, clean: bool) -> BytesMut {
        let mut c = v4::Connect::new(id);
        c.clean_session = clean;
        c.keep_alive = 30;
        c.set_login("u", "p");
        c.last_will = Some(v4::LastWill::new(
            "s/dead",
            "bye",
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            false,
        ));
        let mut buf = BytesMut::new();
        v4::Packet::Connect(c).write(&mut buf, usize::MAX).unwrap();
        buf
    }

    #[test]
    fn a_connect_is_read_whichever_version_it_speaks() {
        let mut buf = v4_connect("dev-1", false);
        let c = read_connect(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(c.version, Version::V311);
        assert_eq!(c.client_id, "dev-1");
        assert!(c.keep_session && !c.clean_start);
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p"));
        assert_eq!(c.will.unwrap().topic, "s/dead");
        assert!(buf.is_empty());

        let mut props = v5::ConnectProperties::new();
        props.session_expiry_interval = Some(60);
        props.receive_maximum = Some(7);
        let c5 = v5::Connect {
            keep_alive: 10,
            client_id: "dev-5".into(),
            clean_start: true,
            properties: Some(props),
        };
        let mut buf = BytesMut::new();
        v5::Packet::Connect(c5, None, None)
            .write(&mut buf, None)
            .unwrap();
        let c = read_connect(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(c.version, Version::V5);
        assert!(c.clean_start && c.keep_session);
        assert_eq!(c.session_expiry, Some(std::time::Duration::from_secs(60)));
        assert_eq!(c.receive_maximum, Some(7));
    }

    #[test]
    fn a_partial_connect_waits_for_more_bytes() {
        let full = v4_connect("dev-1", true);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(
                read_connect(&mut part, 1 << 20).unwrap().is_none(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn old_protocol_levels_are_named() {
        // MQTT 3.1: "MQIsdp", level 3.
        let mut buf = BytesMut::from(
            &[
                0x10, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 10, 0, 0,
            ][..],
        );
        assert!(matches!(
            read_connect(&mut buf, 1 << 20),
            Err(MqttError::UnsupportedProtocol(3))
        ));
    }

    #[test]
    fn garbage_and_oversized_packets_are_errors_not_panics() {
        let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(read_connect(&mut garbage, 1 << 20).is_err());
        let mut big = v4_connect("dev-1", true);
        assert!(matches!(
            read_connect(&mut big, 10),
            Err(MqttError::PacketTooLarge { .. })
        ));
        // Every prefix and every one-byte corruption of real packets.
        let mut publish = BytesMut::new();
        let mut p = v4::Publish::new("a/b", rumqttc::mqttbytes::QoS::AtLeastOnce, "x");
        p.pkid = 7;
        v4::Packet::Publish(p)
            .write(&mut publish, usize::MAX)
            .unwrap();
        let packets = [v4_connect("d", true), publish];
        for p in packets {
            for i in 0..p.len() {
                for b in [0x00, 0x7f, 0x80, 0xff] {
                    let mut bytes = p.clone();
                    bytes[i] = b;
                    let _ = read_connect(&mut bytes.clone(), 1 << 20);
                    let _ = read(Version::V311, &mut bytes.clone(), 1 << 20);
                    let _ = read(Version::V5, &mut bytes, 1 << 20);
                }
            }
        }
    }

    #[test]
    fn a_zero_length_v5_disconnect_is_a_normal_disconnect() {
        let mut buf = BytesMut::from(&[0xe0, 0x00][..]);
        assert_eq!(
            read(Version::V5, &mut buf, 1024).unwrap(),
            Some(Inbound::Disconnect {
                publish_will: false
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn acks_round_trip_in_both_versions() {
        for version in [Version::V311, Version::V5] {
            let mut buf = BytesMut::new();
            write(
                version,
                &Outbound::SubAck {
                    pkid: 3,
                    granted: vec![Some(1), None],
                },
                &mut buf,
                None,
            )
            .unwrap();
            write(
                version,
                &Outbound::Publish(OutPublish {
                    topic: "s/x".into(),
                    payload: Bytes::from_static(b"v"),
                    qos: 1,
                    pkid: 9,
                    dup: false,
                }),
                &mut buf,
                None,
            )
            .unwrap();
            assert!(buf.len() > 8);
            let too_small = write(
                version,
                &Outbound::Publish(OutPublish {
                    topic: "s/x".into(),
                    payload: Bytes::from(vec![0; 100]),
                    qos: 0,
                    pkid: 0,
                    dup: false,
                }),
                &mut BytesMut::new(),
                Some(50),
            );
            assert!(too_small.is_err(), "larger than the client takes");
        }
    }
}
