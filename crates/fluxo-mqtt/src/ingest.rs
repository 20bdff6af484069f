//! A device's PUBLISH becomes a record of a fluxo topic.

use std::sync::Arc;

use bytes::Bytes;
use fluxo_log::partitioner::partition_for_key;
use fluxo_log::{LogError, LogStore, OutRecord, PartitionLog, Topic, TopicConfig};

use crate::mapping::fluxo_topic_of;
use crate::{MqttConfig, MqttError};

/// The header that carries the MQTT topic beside the key, so consumers
/// that key records otherwise (a SQL sink re-keying) still see it.
pub const MQTT_TOPIC_HEADER: &str = "mqtt_topic";

/// A record written to the log (page cache) but perhaps not yet durable.
pub struct Appended {
    log: Arc<PartitionLog>,
    end_offset: i64,
}

impl Appended {
    /// Waits for the fsync covering the record. Concurrent waiters on the
    /// partition share one fsync (the log's group commit), so devices
    /// publishing at once do not wait for each other's fsyncs in turn.
    pub async fn durable(self) -> Result<(), MqttError> {
        Ok(self.log.sync_to(self.end_offset).await?)
    }
}

/// The fluxo topic for `name`, created with the broker's defaults when
/// missing and auto-creation is on (as a Kafka producer's Metadata does).
pub fn topic_for(
    store: &LogStore,
    config: &MqttConfig,
    name: &str,
) -> Result<Arc<Topic>, MqttError> {
    if let Some(topic) = store.topic(name) {
        return Ok(topic);
    }
    if !config.auto_create_topics {
        return Err(MqttError::TopicRefused {
            topic: name.to_string(),
            reason: "the topic does not exist and auto.create.topics.enable is off".into(),
        });
    }
    match store.create_topic(name, config.default_partitions, TopicConfig::default()) {
        Ok(topic) => Ok(topic),
        // Another client created it first.
        Err(LogError::TopicExists(_)) => store.topic(name).ok_or_else(|| MqttError::TopicRefused {
            topic: name.to_string(),
            reason: "the topic was deleted while it was created".into(),
        }),
        Err(LogError::InvalidTopic(reason)) => Err(MqttError::TopicRefused {
            topic: name.to_string(),
            reason,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Appends one PUBLISH: key and `mqtt_topic` header = the MQTT topic,
/// value = the payload, partition chosen from the key as Kafka clients
/// choose it. MQTT 5 user properties become headers too.
pub fn append_publish(
    store: &LogStore,
    config: &MqttConfig,
    mqtt_topic: &str,
    payload: Bytes,
    user_properties: &[(String, String)],
) -> Result<Appended, MqttError> {
    let fluxo_topic = fluxo_topic_of(mqtt_topic)?;
    let topic = topic_for(store, config, fluxo_topic)?;
    let key = Bytes::copy_from_slice(mqtt_topic.as_bytes());
    let partition = partition_for_key(&key, topic.partition_count());
    let log = topic
        .partition(partition)
        .ok_or_else(|| LogError::UnknownTopic(format!("{fluxo_topic}-{partition}")))?;
    let mut headers = Vec::with_capacity(1 + user_properties.len());
    headers.push((MQTT_TOPIC_HEADER.to_string(), key.clone()));
    headers.extend(
        user_properties
            .iter()
            .map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v.as_bytes()))),
    );
    let record = OutRecord {
        key: Some(key),
        value: Some(payload),
        headers,
        timestamp: fluxo_log::now_ms(),
    };
    let range = log
        .append_records(std::slice::from_ref(&record), None)?
        .ok_or_else(|| LogError::InvalidRecord("nothing was appended".into()))?;
    Ok(Appended {
        log,
        end_offset: range.last_offset + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo_log::records::decode_records;

    fn config(auto_create: bool) -> MqttConfig {
        MqttConfig {
            auto_create_topics: auto_create,
            default_partitions: 3,
            ..MqttConfig::default()
        }
    }

    #[tokio::test]
    async fn a_publish_is_a_keyed_record_with_its_topic_as_header() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let appended = append_publish(
            &store,
            &config(true),
            "sensors/dev-1/temp",
            Bytes::from_static(b"21.5"),
            &[("unit".into(), "C".into())],
        )
        .unwrap();
        appended.durable().await.unwrap();
        let topic = store.topic("sensors").expect("created on demand");
        assert_eq!(topic.partition_count(), 3);
        let p = partition_for_key(b"sensors/dev-1/temp", 3);
        let log = topic.partition(p).unwrap();
        assert_eq!(log.flushed_offset(), 1, "durable before the ack");
        let (records, _) = decode_records(&log.read(0, 1 << 20).unwrap(), 0, &[]).unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r.key.as_deref(), Some(&b"sensors/dev-1/temp"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"21.5"[..]));
        let headers: Vec<(String, Vec<u8>)> = r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.as_ref().map(|b| b.to_vec()).unwrap_or_default(),
                )
            })
            .collect();
        assert!(headers.contains(&("mqtt_topic".into(), b"sensors/dev-1/temp".to_vec())));
        assert!(headers.contains(&("unit".into(), b"C".to_vec())));
    }

    #[test]
    fn missing_topics_are_refused_without_auto_creation() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let e = append_publish(&store, &config(false), "x/y", Bytes::new(), &[]);
        assert!(matches!(e, Err(MqttError::TopicRefused { .. })));
        assert!(store.topic("x").is_none());
        let e = append_publish(&store, &config(true), "bad name/y", Bytes::new(), &[]);
        assert!(matches!(e, Err(MqttError::TopicRefused { .. })));
    }
}
