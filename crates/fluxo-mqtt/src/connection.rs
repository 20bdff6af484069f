//! One MQTT connection: CONNECT, then packets until DISCONNECT, a lost
//! socket, a keep-alive timeout, a protocol error or a takeover.
//!
//! Answers (PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK, PINGRESP) go through
//! one ordered queue of futures, so a QoS 1 PUBACK waiting for its fsync
//! never lets a later answer overtake it, while the connection goes on
//! reading and appending the packets after it (the spec asks for PUBACKs
//! in PUBLISH order).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesOrdered, StreamExt};
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::deliver::{self, Delivery, Filters};
use crate::ingest::{append_publish, topic_for};
use crate::mapping::{filter_target, FilterTarget};
use crate::packet::{
    self, AckReason, ConnAckCode, ConnectRequest, DisconnectReason, Inbound, OutPublish, Outbound,
    Version, Will,
};
use crate::session::SessionState;
use crate::{MqttError, Shared};

/// A client that connects and says nothing is dropped after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a takeover waits for the old connection to let go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a client that does not read may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// QoS 1 deliveries unacknowledged at once (MQTT 5 clients may ask for
/// fewer with Receive Maximum).
const MAX_INFLIGHT: usize = 64;
/// The largest packet MQTT can frame (a remaining length of 4 bytes).
const MAX_MQTT_PACKET: u32 = 268_435_455;
/// Server receive maximum announced to MQTT 5 clients.
const RECEIVE_MAXIMUM: u16 = 1024;

type Answer = BoxFuture<'static, Result<Outbound, MqttError>>;

/// How a connection ended, which decides the will.
enum End {
    /// DISCONNECT: no will (unless an MQTT 5 client asked for it).
    Disconnect { publish_will: bool },
    /// Socket closed, timed out, broken protocol, taken over.
    Lost,
    /// The server stops: no will, the device did nothing wrong.
    Shutdown,
}

pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = run(stream, peer, &shared, shutdown).await {
        match e {
            MqttError::Io(_) => tracing::debug!(%peer, "mqtt: connection closed: {e}"),
            _ => tracing::warn!(%peer, "mqtt: closing the connection: {e}"),
        }
    }
}

async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), MqttError> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut inbuf = BytesMut::with_capacity(4096);
    let max = shared.config.max_packet_bytes;
    let connect =
        match tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut reader, &mut inbuf, max))
            .await
        {
            Err(_) => return Err(MqttError::Protocol("no CONNECT within 10 s".into())),
            Ok(Err(MqttError::UnsupportedProtocol(level))) => {
                // The 3.1.1 CONNACK is what older clients can read.
                let refusal = connack(ConnAckCode::UnsupportedProtocolVersion, false, None, max);
                let _ = send(&mut writer, Version::V311, &refusal, None).await;
                return Err(MqttError::UnsupportedProtocol(level));
            }
            Ok(result) => result?,
        };
    let version = connect.version;
    if !shared.config.accepts(&connect) {
        let refusal = connack(ConnAckCode::BadUserNameOrPassword, false, None, max);
        send(&mut writer, version, &refusal, None).await?;
        return Err(MqttError::Protocol(format!(
            "client '{}' gave a wrong user name or password",
            connect.client_id
        )));
    }
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            // 3.1.1: a persistent session needs a name to come back to.
            let refusal = connack(ConnAckCode::ClientIdRejected, false, None, max);
            send(&mut writer, version, &refusal, None).await?;
            return Err(MqttError::Protocol(
                "an empty client id with a persistent session".into(),
            ));
        }
        let id = format!("fluxo-{}", uuid::Uuid::new_v4().simple());
        if version == Version::V5 {
            assigned = Some(id.clone());
        }
        id
    } else {
        connect.client_id.clone()
    };
    let claim = shared.sessions.claim(
        &client_id,
        connect.clean_start,
        connect.keep_session.then_some(connect.session_expiry),
    );
    let session =
        match tokio::time::timeout(TAKEOVER_TIMEOUT, claim.state.clone().lock_owned()).await {
            Ok(guard) => guard,
            Err(_) => {
                shared.sessions.release(&client_id, claim.generation);
                return Err(MqttError::Protocol(format!(
                    "the previous connection of client '{client_id}' did not close"
                )));
            }
        };
    tracing::debug!(%peer, client_id, ?version, session_present = claim.session_present, "mqtt: connected");
    let (to_connection, deliveries) = mpsc::channel(256);
    let mut conn = Connection {
        shared: shared.clone(),
        version,
        client_id: client_id.clone(),
        max_out: connect.max_packet_size,
        inflight_limit: connect
            .receive_maximum
            .map_or(MAX_INFLIGHT, |m| (m as usize).clamp(1, MAX_INFLIGHT)),
        session,
        writer,
        outbuf: BytesMut::new(),
        filters: Arc::new(RwLock::new(Vec::new())),
        readers: HashMap::new(),
        to_connection,
        answers: FuturesOrdered::new(),
        will: connect.will.clone(),
    };
    conn.queue(connack(
        ConnAckCode::Accepted,
        claim.session_present,
        assigned,
        max,
    ))?;
    conn.resume();
    let keep_alive = Duration::from_millis(connect.keep_alive_secs as u64 * 1500);
    let end = conn
        .serve(
            reader,
            inbuf,
            deliveries,
            claim.kicked,
            shutdown,
            keep_alive,
        )
        .await;
    for (_, reader) in conn.readers.drain() {
        reader.abort();
    }
    let will = conn.will.take();
    // Let a waiting successor have the session before the will goes out.
    drop(conn);
    shared.sessions.release(&client_id, claim.generation);
    let (publish_will, result) = match end {
        Ok(End::Disconnect { publish_will }) => (publish_will, Ok(())),
        Ok(End::Lost) => (true, Ok(())),
        Ok(End::Shutdown) => (false, Ok(())),
        Err(e) => (true, Err(e)),
    };
    if publish_will {
        if let Some(will) = will {
            publish_last_will(shared, &client_id, will).await;
        }
    }
    result
}

async fn publish_last_will(shared: &Shared, client_id: &str, will: Will) {
    match append_publish(
        &shared.store,
        &shared.config,
        &will.topic,
        will.payload,
        &[],
    ) {
        Ok(appended) => {
            if let Err(e) = appended.durable().await {
                tracing::warn!(
                    client_id,
                    "mqtt: the last will is written but not fsynced: {e}"
                );
            }
        }
        Err(e) => tracing::warn!(client_id, "mqtt: cannot publish the last will: {e}"),
    }
}

/// `max_packet`: the largest packet this server takes, told to MQTT 5
/// clients (capped at what MQTT can frame).
fn connack(
    code: ConnAckCode,
    session_present: bool,
    assigned: Option<String>,
    max_packet: usize,
) -> Outbound {
    Outbound::ConnAck {
        session_present,
        code,
        assigned_client_id: assigned,
        receive_maximum: RECEIVE_MAXIMUM,
        max_packet_size: u32::try_from(max_packet)
            .unwrap_or(MAX_MQTT_PACKET)
            .min(MAX_MQTT_PACKET),
    }
}

async fn read_connect(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<ConnectRequest, MqttError> {
    loop {
        if let Some(connect) = packet::read_connect(buf, max)? {
            return Ok(connect);
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(MqttError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

async fn send(
    writer: &mut OwnedWriteHalf,
    version: Version,
    packet: &Outbound,
    max_out: Option<u32>,
) -> Result<(), MqttError> {
    let mut buf = BytesMut::new();
    packet::write(version, packet, &mut buf, max_out)?;
    writer.write_all(&buf).await?;
    Ok(())
}

struct Connection {
    shared: Arc<Shared>,
    version: Version,
    client_id: String,
    max_out: Option<u32>,
    inflight_limit: usize,
    session: OwnedMutexGuard<SessionState>,
    writer: OwnedWriteHalf,
    outbuf: BytesMut,
    filters: Filters,
    readers: HashMap<(Arc<str>, i32), JoinHandle<()>>,
    to_connection: mpsc::Sender<Delivery>,
    answers: FuturesOrdered<Answer>,
    will: Option<Will>,
}

impl Connection {
    async fn serve(
        &mut self,
        mut reader: OwnedReadHalf,
        mut inbuf: BytesMut,
        mut deliveries: mpsc::Receiver<Delivery>,
        mut kicked: tokio::sync::oneshot::Receiver<()>,
        mut shutdown: watch::Receiver<bool>,
        keep_alive: Duration,
    ) -> Result<End, MqttError> {
        let max = self.shared.config.max_packet_bytes;
        let mut deadline = Instant::now() + keep_alive;
        loop {
            // Packets already buffered (several may come in one read).
            loop {
                let packet = match self.read_packet(&mut inbuf, max) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(e) => {
                        // Best effort: an MQTT 5 client learns why.
                        let _ = self.flush().await;
                        return Err(e);
                    }
                };
                let handled = match self.handle(packet) {
                    Ok(handled) => handled,
                    Err(e) => {
                        if matches!(e, MqttError::Protocol(_)) {
                            self.disconnect(DisconnectReason::ProtocolError).await;
                        }
                        return Err(e);
                    }
                };
                if let Some(end) = handled {
                    self.flush().await?;
                    // Answers still waiting for fsync are sent before the
                    // socket closes, as a client that pipelined expects.
                    while let Some(answer) = self.answers.next().await {
                        self.queue(answer?)?;
                    }
                    self.flush().await?;
                    return Ok(end);
                }
            }
            self.flush().await?;
            let room = self.session.inflight.len() < self.inflight_limit;
            let sleep = tokio::time::sleep_until(deadline);
            tokio::select! {
                _ = &mut kicked => {
                    self.disconnect(DisconnectReason::SessionTakenOver).await;
                    tracing::info!(client_id = %self.client_id, "mqtt: session taken over by a new connection");
                    return Ok(End::Lost);
                }
                _ = shutdown.changed() => {
                    self.disconnect(DisconnectReason::ServerShuttingDown).await;
                    return Ok(End::Shutdown);
                }
                read = reader.read_buf(&mut inbuf) => {
                    if read? == 0 {
                        return Ok(End::Lost);
                    }
                    deadline = Instant::now() + keep_alive;
                }
                Some(answer) = self.answers.next(), if !self.answers.is_empty() => {
                    self.queue(answer?)?;
                }
                Some(delivery) = deliveries.recv(), if room => {
                    self.deliver(delivery)?;
                }
                _ = sleep, if !keep_alive.is_zero() => {
                    self.disconnect(DisconnectReason::KeepAliveTimeout).await;
                    return Err(MqttError::Protocol(format!(
                        "no packet within 1.5 x the keep-alive ({} ms)", keep_alive.as_millis()
                    )));
                }
            }
        }
    }

    fn read_packet(
        &mut self,
        inbuf: &mut BytesMut,
        max: usize,
    ) -> Result<Option<Inbound>, MqttError> {
        match packet::read(self.version, inbuf, max) {
            Ok(p) => Ok(p),
            Err(e) => {
                let reason = match e {
                    MqttError::PacketTooLarge { .. } => DisconnectReason::PacketTooLarge,
                    _ => DisconnectReason::MalformedPacket,
                };
                // Best effort: the socket may be gone already.
                let mut buf = BytesMut::new();
                if self.version == Version::V5
                    && packet::write(self.version, &Outbound::Disconnect(reason), &mut buf, None)
                        .is_ok()
                {
                    self.outbuf.extend_from_slice(&buf);
                }
                Err(e)
            }
        }
    }

    /// Handles one packet; Some when the connection is to end.
    fn handle(&mut self, packet: Inbound) -> Result<Option<End>, MqttError> {
        match packet {
            Inbound::Publish(p) => self.publish(p)?,
            Inbound::PubRel(pkid) => {
                self.session.incoming_qos2.remove(&pkid);
                self.answer_now(Outbound::PubComp(pkid));
            }
            Inbound::PubAck(pkid) => {
                self.session.inflight.remove(&pkid);
            }
            // Deliveries are at most QoS 1: these answer nothing we sent.
            Inbound::PubRec(pkid) | Inbound::PubComp(pkid) => {
                tracing::debug!(client_id = %self.client_id, pkid, "mqtt: ignoring a QoS 2 acknowledgement");
            }
            Inbound::Subscribe { pkid, filters } => self.subscribe(pkid, filters),
            Inbound::Unsubscribe { pkid, filters } => self.unsubscribe(pkid, filters),
            Inbound::PingReq => self.answer_now(Outbound::PingResp),
            Inbound::Disconnect { publish_will } => {
                return Ok(Some(End::Disconnect { publish_will }));
            }
            Inbound::Unexpected(what) => {
                return Err(MqttError::Protocol(format!("a client may not send {what}")));
            }
        }
        Ok(None)
    }

    fn publish(&mut self, p: packet::InPublish) -> Result<(), MqttError> {
        if p.qos == 2 && self.session.incoming_qos2.contains(&p.pkid) {
            // A repeat of a PUBLISH already written (its PUBREC was lost):
            // exactly once means acknowledging without writing again.
            self.answer_now(Outbound::PubRec {
                pkid: p.pkid,
                reason: AckReason::Success,
            });
            return Ok(());
        }
        let appended = append_publish(
            &self.shared.store,
            &self.shared.config,
            &p.topic,
            p.payload,
            &p.user_properties,
        );
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                let reason = match e {
                    MqttError::TopicRefused { .. } => AckReason::TopicNameInvalid,
                    _ => AckReason::UnspecifiedError,
                };
                // 3.1.1 has no negative acknowledgement: the spec's answer
                // to a PUBLISH the server will not take is closing.
                if self.version == Version::V311 || p.qos == 0 {
                    if self.version == Version::V311 {
                        return Err(e);
                    }
                    tracing::info!(client_id = %self.client_id, "mqtt: QoS 0 PUBLISH dropped: {e}");
                    return Ok(());
                }
                tracing::info!(client_id = %self.client_id, "mqtt: PUBLISH refused: {e}");
                let answer = if p.qos == 1 {
                    Outbound::PubAck {
                        pkid: p.pkid,
                        reason,
                    }
                } else {
                    Outbound::PubRec {
                        pkid: p.pkid,
                        reason,
                    }
                };
                self.answer_now(answer);
                return Ok(());
            }
        };
        match p.qos {
            0 => {}
            1 => {
                let pkid = p.pkid;
                self.answers.push_back(
                    async move {
                        appended.durable().await?;
                        Ok(Outbound::PubAck {
                            pkid,
                            reason: AckReason::Success,
                        })
                    }
                    .boxed(),
                );
            }
            _ => {
                let pkid = p.pkid;
                self.session.incoming_qos2.insert(pkid);
                self.answers.push_back(
                    async move {
                        appended.durable().await?;
                        Ok(Outbound::PubRec {
                            pkid,
                            reason: AckReason::Success,
                        })
                    }
                    .boxed(),
                );
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) {
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            let ok = match filter_target(&filter) {
                Ok(FilterTarget::Topic(name)) => {
                    match topic_for(&self.shared.store, &self.shared.config, &name) {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::info!(client_id = %self.client_id, filter, "mqtt: subscription refused: {e}");
                            false
                        }
                    }
                }
                Ok(FilterTarget::AllTopics) => true,
                Err(e) => {
                    tracing::info!(client_id = %self.client_id, filter, "mqtt: subscription refused: {e}");
                    false
                }
            };
            if ok {
                // Delivered at most at QoS 1 (see the crate docs).
                let qos = qos.min(1);
                self.session.subscriptions.insert(filter, qos);
                granted.push(Some(qos));
            } else {
                granted.push(None);
            }
        }
        self.follow_subscriptions();
        self.answer_now(Outbound::SubAck { pkid, granted });
    }

    fn unsubscribe(&mut self, pkid: u16, filters: Vec<String>) {
        let count = filters.len();
        for filter in filters {
            self.session.subscriptions.remove(&filter);
        }
        self.follow_subscriptions();
        self.answer_now(Outbound::UnsubAck {
            pkid,
            filters: count,
        });
    }

    /// Runs a reader for each partition the subscriptions read, and only
    /// those. A partition read for the first time starts at its end: a
    /// subscriber gets what is written after it subscribed.
    fn follow_subscriptions(&mut self) {
        *self.filters.write() = self
            .session
            .subscriptions
            .iter()
            .map(|(f, q)| (f.clone(), *q))
            .collect();
        let mut wanted: HashSet<String> = HashSet::new();
        for filter in self.session.subscriptions.keys() {
            match filter_target(filter) {
                Ok(FilterTarget::Topic(name)) => {
                    wanted.insert(name);
                }
                Ok(FilterTarget::AllTopics) => {
                    wanted.extend(
                        self.shared
                            .store
                            .topics()
                            .iter()
                            .map(|t| t.name.clone())
                            .filter(|n| !fluxo_log::is_internal_topic(n)),
                    );
                }
                Err(_) => {}
            }
        }
        let mut keep: HashSet<(String, i32)> = HashSet::new();
        for name in &wanted {
            let Some(topic) = self.shared.store.topic(name) else {
                continue;
            };
            let shared_name: Arc<str> = Arc::from(name.as_str());
            for (partition, log) in topic.partitions().into_iter().enumerate() {
                let partition = partition as i32;
                let key = (name.clone(), partition);
                keep.insert(key.clone());
                let start = *self
                    .session
                    .positions
                    .entry(key)
                    .or_insert_with(|| log.end_offset());
                let reader_key = (shared_name.clone(), partition);
                if self.readers.contains_key(&reader_key) {
                    continue;
                }
                let reader = tokio::spawn(deliver::follow(
                    log,
                    shared_name.clone(),
                    partition,
                    start,
                    self.filters.clone(),
                    self.to_connection.clone(),
                ));
                self.readers.insert(reader_key, reader);
            }
        }
        self.readers.retain(|(name, partition), reader| {
            let wanted = keep.contains(&(name.to_string(), *partition));
            if !wanted {
                reader.abort();
            }
            wanted
        });
        self.session.positions.retain(|key, _| keep.contains(key));
    }

    /// After CONNACK: a resumed session's unacknowledged deliveries go out
    /// again (DUP, same packet ids, as the spec asks), then its readers
    /// start where the last connection stopped.
    fn resume(&mut self) {
        let again: Vec<OutPublish> = self.session.inflight.values().cloned().collect();
        for mut p in again {
            p.dup = true;
            self.write_publish(p);
        }
        self.follow_subscriptions();
    }

    fn deliver(&mut self, delivery: Delivery) -> Result<(), MqttError> {
        let key = (delivery.topic.to_string(), delivery.partition);
        if !self.session.positions.contains_key(&key) {
            // Read before an UNSUBSCRIBE stopped its reader.
            return Ok(());
        }
        if let Some(message) = delivery.message {
            let mut publish = OutPublish {
                topic: message.mqtt_topic,
                payload: message.payload,
                qos: message.qos,
                pkid: 0,
                dup: false,
            };
            if publish.qos > 0 {
                let Some(pkid) = self.session.next_packet_id() else {
                    return Err(MqttError::Protocol("no free packet id".into()));
                };
                publish.pkid = pkid;
                self.session.inflight.insert(pkid, publish.clone());
            }
            self.write_publish(publish);
        }
        self.session.positions.insert(key, delivery.next_offset);
        Ok(())
    }

    fn write_publish(&mut self, publish: OutPublish) {
        let pkid = publish.pkid;
        if let Err(e) = packet::write(
            self.version,
            &Outbound::Publish(publish),
            &mut self.outbuf,
            self.max_out,
        ) {
            // Larger than the client takes: the spec says drop it.
            tracing::debug!(client_id = %self.client_id, "mqtt: delivery dropped: {e}");
            self.session.inflight.remove(&pkid);
        }
    }

    /// Queues an answer behind those still waiting for an fsync.
    fn answer_now(&mut self, answer: Outbound) {
        self.answers
            .push_back(std::future::ready(Ok(answer)).boxed());
    }

    fn queue(&mut self, packet: Outbound) -> Result<(), MqttError> {
        packet::write(self.version, &packet, &mut self.outbuf, self.max_out)
    }

    async fn flush(&mut self) -> Result<(), MqttError> {
        if !self.outbuf.is_empty() {
            let out = self.outbuf.split();
            // A client that stops reading would otherwise hold this
            // connection (and its session) forever.
            tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&out))
                .await
                .map_err(|_| {
                    MqttError::Protocol(format!(
                        "the client read nothing for {} s",
                        WRITE_TIMEOUT.as_secs()
                    ))
                })??;
        }
        Ok(())
    }

    /// MQTT 5 says why the server closes; 3.1.1 just closes.
    async fn disconnect(&mut self, reason: DisconnectReason) {
        if self.version == Version::V5 {
            let _ = self.queue(Outbound::Disconnect(reason));
        }
        let _ = self.flush().await;
    }
}
