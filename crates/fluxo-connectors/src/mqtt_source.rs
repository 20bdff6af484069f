//! The `mqtt` connector: a source that subscribes to an existing MQTT broker.
//!
//! `CREATE SOURCE readings (...) WITH (connector = 'mqtt', url =
//! 'mqtt://broker:1883', topic = 'sensors/#', format = 'json')` subscribes
//! to the filter `topic` on the broker at `url` and lands every message in
//! the source's topic of fluxo's log (`mqtt-<source>`, or `log_topic`): its
//! value the payload, its key and the header `mqtt_topic` the MQTT topic it
//! was published to. Pipelines then read that topic like any other, so what
//! the devices sent is durable and replayable before any view sees it.
//!
//! Nothing acknowledged is lost: the subscription is QoS 1 on a persistent
//! session (`clean_session = false` under a client id derived from the
//! source), and a message is acknowledged to the broker (PUBACK) only once
//! its record is appended and synced. A message the broker sends again
//! after a crash between the two is appended again: MQTT QoS 1 is at least
//! once, and so is this source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxo_log::{LogStore, OutRecord, PartitionLog};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source::{ingest_partition, IngestThread};
use crate::{opt, ConnectorInfo, ConnectorKind};

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "mqtt",
    kind: ConnectorKind::Source,
    description: "subscribes to an existing MQTT broker and lands its messages in the source's topic (QoS 1, acknowledged once durable)",
    options: &[
        opt("url", true, "mqtt://[user:password@]host[:port] of the broker"),
        opt("topic", true, "the MQTT topic filter subscribed to, e.g. 'sensors/#'"),
        opt("client_id", false, "the MQTT client id (default fluxo-<source>); its session persists on the broker"),
        opt("log_topic", false, "the fluxo topic written (default mqtt-<source>)"),
    ],
};

/// The header holding the MQTT topic a message was published to.
pub const MQTT_TOPIC_HEADER: &str = "mqtt_topic";

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSourceOptions {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    pub filter: String,
    pub client_id: String,
    pub log_topic: String,
}

impl MqttSourceOptions {
    pub fn from_options(source: &str, options: &mut Options) -> Result<MqttSourceOptions> {
        let what = CONNECTOR.what();
        let given = options.required(&what, "url")?;
        let url = url::Url::parse(given)
            .map_err(|e| ConnectorError::Config(format!("url = '{given}': {e}")))?;
        if url.scheme() != "mqtt" && url.scheme() != "tcp" {
            return Err(ConnectorError::Config(format!(
                "url = '{given}': give mqtt://host:port (TLS brokers are not supported by this build)"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ConnectorError::Config(format!("url = '{given}' has no host")))?
            .to_string();
        let port = url.port().unwrap_or(1883);
        let credentials = (!url.username().is_empty()).then(|| {
            (
                url.username().to_string(),
                url.password().unwrap_or("").to_string(),
            )
        });
        let filter = options.required(&what, "topic")?.to_string();
        valid_filter(&filter)
            .map_err(|e| ConnectorError::Config(format!("topic = '{filter}': {e}")))?;
        let client_id = options
            .get("client_id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("fluxo-{source}"));
        let log_topic = options
            .get("log_topic")
            .map(str::to_string)
            .unwrap_or_else(|| format!("mqtt-{source}"));
        LogStore::validate_topic_name(&log_topic)
            .map_err(|e| ConnectorError::Config(format!("log_topic = '{log_topic}': {e}")))?;
        options.0.insert("log_topic".into(), log_topic.clone());
        Ok(MqttSourceOptions {
            host,
            port,
            credentials,
            filter,
            client_id,
            log_topic,
        })
    }
}

/// An MQTT topic filter: levels split by `/`, `+` a whole level, `#` only
/// as the last level.
fn valid_filter(filter: &str) -> std::result::Result<(), &'static str> {
    if filter.is_empty() {
        return Err("an empty filter");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("'#' must be a whole level, and the last");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Creates the topic if needed and starts the subscription on a thread of
/// its own, reconnecting with back-off while the broker is away.
pub fn start(options: MqttSourceOptions, store: Arc<LogStore>) -> Result<IngestThread> {
    let log = ingest_partition(&store, &options.log_topic)?;
    IngestThread::spawn(format!("mqtt-{}", options.log_topic), move |stop| {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "mqtt source: cannot start its runtime");
                return;
            }
        };
        runtime.block_on(subscribe(options, log, stop));
    })
}

/// Messages appended (and synced) at once at most; a burst from many
/// devices is one append and one fsync.
const MAX_BATCH: usize = 1000;

async fn subscribe(options: MqttSourceOptions, log: Arc<PartitionLog>, stop: Arc<AtomicBool>) {
    let mut mqtt = MqttOptions::new(&options.client_id, &options.host, options.port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(16 << 20, 16 << 20);
    if let Some((user, password)) = &options.credentials {
        mqtt.set_credentials(user, password);
    }
    let (client, events) = AsyncClient::new(mqtt, MAX_BATCH);
    // The event loop runs alone (its poll is not known to be safe to cancel)
    // and hands messages over a channel, whose receive is.
    let (messages, mut incoming) = tokio::sync::mpsc::channel(MAX_BATCH);
    let poller = tokio::spawn(poll_events(
        events,
        client.clone(),
        options.filter.clone(),
        options.host.clone(),
        messages,
    ));
    let mut batch = Vec::new();
    while !stop.load(Ordering::Acquire) {
        // Gather what is ready, then append it all before acknowledging.
        match tokio::time::timeout(Duration::from_millis(200), incoming.recv()).await {
            Ok(Some(p)) => batch.push(p),
            Ok(None) => break,
            Err(_) => continue,
        }
        while batch.len() < MAX_BATCH {
            match incoming.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let now = crate::now_ms();
        let records: Vec<OutRecord> = batch
            .iter()
            .map(|p| OutRecord {
                key: Some(Bytes::from(p.topic.clone())),
                value: Some(p.payload.clone()),
                headers: vec![(MQTT_TOPIC_HEADER.to_string(), Bytes::from(p.topic.clone()))],
                timestamp: now,
            })
            .collect();
        match log
            .append_records(&records, None)
            .and_then(|_| log.sync_now())
        {
            Ok(_) => {
                for p in batch.drain(..) {
                    if p.qos != QoS::AtMostOnce {
                        let _ = client.ack(&p).await;
                    }
                }
            }
            Err(e) => {
                // Unacknowledged: the broker sends them again after the
                // reconnect, when the disk may have room again.
                tracing::error!(topic = %options.log_topic, error = %e, "mqtt source: cannot append; reconnecting to get the messages again");
                batch.clear();
                let _ = client.disconnect().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let _ = client.disconnect().await;
    poller.abort();
}

/// Drives the connection: (re)connects with back-off, subscribes on every
/// connect (the session may be new), passes messages on.
async fn poll_events(
    mut events: EventLoop,
    client: AsyncClient,
    filter: String,
    host: String,
    messages: tokio::sync::mpsc::Sender<rumqttc::Publish>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(broker = %host, session_present = ack.session_present, "mqtt source connected");
                if let Err(e) = client.subscribe(&filter, QoS::AtLeastOnce).await {
                    tracing::warn!(error = %e, "mqtt source: cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if messages.send(p).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(broker = %host, error = %e, "mqtt source: connection lost; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn filters_and_urls_are_checked() {
        assert!(valid_filter("sensors/#").is_ok());
        assert!(valid_filter("sensors/+/temp").is_ok());
        assert!(valid_filter("sensors/#/temp").is_err());
        assert!(valid_filter("sensors/a+").is_err());
        let mut o = Options(BTreeMap::from([
            ("url".to_string(), "mqtt://u:p@broker:1884".to_string()),
            ("topic".to_string(), "sensors/#".to_string()),
        ]));
        let m = MqttSourceOptions::from_options("readings", &mut o).unwrap();
        assert_eq!((m.host.as_str(), m.port), ("broker", 1884));
        assert_eq!(m.credentials, Some(("u".into(), "p".into())));
        assert_eq!(m.log_topic, "mqtt-readings");
        assert_eq!(o.get("log_topic"), Some("mqtt-readings"));
        o.0.insert("url".into(), "https://broker".into());
        assert!(MqttSourceOptions::from_options("r", &mut o).is_err());
    }
}
