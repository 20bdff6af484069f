//! The MQTT front: devices connect to fluxo itself (IoT-hub style) over
//! MQTT 3.1.1 or 5 on `--mqtt-addr` (default 127.0.0.1:1883) and publish
//! into, and subscribe to, fluxo topics. The packet codec is `rumqttc`'s
//! (`mqttbytes::v4` and `v5::mqttbytes::v5`); this crate keeps sessions and
//! maps MQTT onto the log.
//!
//! # Mapping
//!
//! - The first level of an MQTT topic names the fluxo topic:
//!   `sensors/dev-1/temp` is written to the fluxo topic `sensors`. A
//!   missing topic is created with the broker's defaults (`num.partitions`)
//!   when `auto.create.topics.enable` is on; otherwise, and for names that
//!   are not valid fluxo topic names (Kafka's rules: ASCII letters, digits,
//!   `.`, `_`, `-`; `__` is internal), the PUBLISH is refused: MQTT 5 gets
//!   a PUBACK/PUBREC with reason 0x90 (topic name invalid), MQTT 3.1.1 is
//!   disconnected, as its spec has no negative PUBACK.
//! - The record's key is the whole MQTT topic, also in the header
//!   `mqtt_topic`; the value is the payload; MQTT 5 user properties become
//!   headers. The partition is chosen from the key like Kafka clients do
//!   (murmur2), so one device's messages stay in order in one partition.
//! - A subscription filter's first level names the fluxo topic it reads
//!   (`alerts/#` reads `alerts`); a filter starting with `+` or `#` reads
//!   every user topic that exists when it subscribes. Subscribers get what
//!   any writer appends after they subscribed (Kafka producers, SQL sinks,
//!   HTTP ingest, other devices), read_committed, delivered under the
//!   record's key when that is an MQTT topic name of the same fluxo topic,
//!   else under the fluxo topic's name, and matched against the filters
//!   with `+` and `#`. Deliveries are at QoS min(granted, 1).
//!
//! # Guarantees
//!
//! - QoS 1: the PUBACK is sent only once the record is fsynced (as a Kafka
//!   produce with `acks=all`); concurrent devices share fsyncs through the
//!   log's group commit, and one device may pipeline: its PUBACKs come in
//!   PUBLISH order while later PUBLISHes are already being written.
//! - QoS 2: exactly once per session: the PUBLISH is written once, its
//!   packet id remembered until PUBREL; a repeat is acknowledged without a
//!   second write. The PUBREC, like a PUBACK, waits for the fsync.
//! - Sessions: a persistent session (3.1.1 clean session 0; 5 with a
//!   session expiry interval above 0) keeps its subscriptions, its read
//!   position in every partition and its unacknowledged QoS 1 deliveries
//!   (sent again with DUP on reconnect) while the server runs, for MQTT 5
//!   until its session expiry interval has passed (checked every 10 s),
//!   for 3.1.1 until the server stops. Sessions are in memory: **they do
//!   not survive a server restart**. A second CONNECT with the same client id closes the
//!   first connection and takes its session over.
//! - Last will: published (written to its topic like a PUBLISH) when a
//!   connection ends without DISCONNECT: socket lost, keep-alive (1.5 ×
//!   the client's) expired, a protocol error, a takeover. Not when the
//!   server shuts down.
//! - Authentication: with a password configured, CONNECT must carry the
//!   configured user name (default `fluxo`) and that password, else CONNACK
//!   "bad user name or password". Without one anyone may connect.
//! - Malformed packets, packets over `max_packet_bytes` and protocol
//!   violations close that connection only, with a log line; network input
//!   never panics the server.
//!
//! Not supported: retained messages (RETAIN is accepted and ignored; MQTT 5
//! CONNACK says retain is not available), shared subscriptions, topic
//! aliases, delivery at QoS 2, TLS and WebSockets.

mod connection;
mod deliver;
mod error;
mod ingest;
mod mapping;
mod packet;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use fluxo_log::LogStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::MqttError;
pub use ingest::MQTT_TOPIC_HEADER;
pub use mapping::{delivery_topic, filter_matches, fluxo_topic_of};

/// How the MQTT listener behaves.
#[derive(Clone)]
pub struct MqttConfig {
    /// `auto.create.topics.enable`: a PUBLISH or SUBSCRIBE naming a missing
    /// fluxo topic creates it.
    pub auto_create_topics: bool,
    /// `num.partitions` of topics created here.
    pub default_partitions: i32,
    /// Larger packets close the connection.
    pub max_packet_bytes: usize,
    /// The user name CONNECT must carry when `password` is set.
    pub user: String,
    /// None: anyone connects.
    pub password: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            auto_create_topics: true,
            default_partitions: 1,
            // The default max.message.bytes, plus room for the topic name
            // and MQTT 5 properties.
            max_packet_bytes: fluxo_log::TopicConfig::default().max_message_bytes() + 64 * 1024,
            user: "fluxo".to_string(),
            password: None,
        }
    }
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("auto_create_topics", &self.auto_create_topics)
            .field("default_partitions", &self.default_partitions)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl MqttConfig {
    fn accepts(&self, connect: &packet::ConnectRequest) -> bool {
        match &self.password {
            None => true,
            Some(password) => {
                connect.username.as_deref() == Some(self.user.as_str())
                    && connect.password.as_deref() == Some(password.as_str())
            }
        }
    }
}

/// What every connection shares.
struct Shared {
    store: Arc<LogStore>,
    config: MqttConfig,
    sessions: session::Sessions,
}

/// A running listener.
pub struct MqttServer {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl MqttServer {
    /// Stops accepting, tells every connection to close (MQTT 5 clients
    /// get DISCONNECT "server shutting down") and waits for them, so no
    /// append is under way when the store closes.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
    }
}

/// Serves MQTT on `listener` until [`MqttServer::shutdown`].
pub fn serve(
    listener: TcpListener,
    store: Arc<LogStore>,
    config: MqttConfig,
) -> Result<MqttServer, MqttError> {
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        store,
        config,
        sessions: session::Sessions::default(),
    });
    let (stop, stopped) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, shared, stopped));
    Ok(MqttServer {
        local_addr,
        stop,
        accept,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    // Kept sessions whose expiry interval passed are dropped at this pace.
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection::serve_connection(
                        stream,
                        peer,
                        shared.clone(),
                        stopped.clone(),
                    ));
                }
                Err(e) => {
                    // Out of descriptors, usually: wait rather than spin.
                    tracing::warn!("mqtt: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = expiry.tick() => shared.sessions.expire(std::time::Instant::now()),
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
