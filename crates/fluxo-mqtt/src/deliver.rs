//! Subscribers get what any writer appends to the fluxo topics their
//! filters name: one reader task per (topic, partition) of a connection
//! follows the partition's end, decodes the records and hands those whose
//! MQTT topic matches a filter to the connection.

use std::sync::Arc;

use bytes::Bytes;
use fluxo_log::batch::{committed_batches, last_offset_of};
use fluxo_log::{LogError, PartitionLog};
use kafka_protocol::records::RecordBatchDecoder;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::mapping::{delivery_topic, filter_matches};

/// What a reader read of one batch of the log.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The session's position once the connection has taken this.
    pub next_offset: i64,
    /// None: the records read matched no filter, only the position moves
    /// (so a persistent session does not read them again).
    pub message: Option<Message>,
}

#[derive(Debug)]
pub struct Message {
    pub mqtt_topic: String,
    pub payload: Bytes,
    /// The highest QoS granted to a matching filter, at most 1.
    pub qos: u8,
}

/// A connection's filters with the QoS granted, shared with its readers.
pub type Filters = Arc<RwLock<Vec<(String, u8)>>>;

/// How much of the log one read takes.
const READ_BYTES: usize = 1 << 20;

/// Follows `log` from `position`, for as long as the connection lives
/// (the connection aborts the task). read_committed: records of aborted
/// transactions (a SQL topic sink's failed epoch) never reach devices.
pub async fn follow(
    log: Arc<PartitionLog>,
    topic: Arc<str>,
    partition: i32,
    mut position: i64,
    filters: Filters,
    to_connection: mpsc::Sender<Delivery>,
) {
    let mut end = log.subscribe();
    loop {
        let _ = end.borrow_and_update();
        let (bytes, aborted) = match log.read_committed(position, READ_BYTES) {
            Ok(read) => read,
            Err(LogError::OffsetOutOfRange { start, end, .. }) => {
                // Retention or DeleteRecords passed the position, or the
                // topic was recreated shorter: go on from what is there.
                position = position.clamp(start, end);
                continue;
            }
            Err(e) => {
                tracing::warn!(%topic, partition, "mqtt: cannot read for subscribers: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = last_offset_of(&bytes) else {
            // Nothing new below the end (or the LSO): wait for an append.
            if end.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut messages = Vec::new();
        for range in committed_batches(&bytes, &aborted) {
            let mut batch = bytes.slice(range);
            let set = match RecordBatchDecoder::decode(&mut batch) {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!(%topic, partition, "mqtt: a batch cannot be decoded, skipped: {e}");
                    continue;
                }
            };
            for record in set.records {
                if record.offset < position || record.control {
                    continue;
                }
                let mqtt_topic = delivery_topic(&topic, record.key.as_deref());
                let qos = matching_qos(&filters.read(), &mqtt_topic);
                if let Some(qos) = qos {
                    messages.push((
                        record.offset,
                        Message {
                            mqtt_topic,
                            payload: record.value.unwrap_or_default(),
                            qos,
                        },
                    ));
                }
            }
        }
        let chunk_end = last + 1;
        let count = messages.len();
        for (i, (offset, message)) in messages.into_iter().enumerate() {
            // The last message carries the chunk's end, so records after
            // it that matched nothing are not read again after a
            // reconnect.
            let next_offset = if i + 1 == count {
                chunk_end
            } else {
                offset + 1
            };
            let delivery = Delivery {
                topic: topic.clone(),
                partition,
                next_offset,
                message: Some(message),
            };
            if to_connection.send(delivery).await.is_err() {
                return;
            }
        }
        if count == 0 {
            let progress = Delivery {
                topic: topic.clone(),
                partition,
                next_offset: chunk_end,
                message: None,
            };
            if to_connection.send(progress).await.is_err() {
                return;
            }
        }
        position = chunk_end;
    }
}

/// The QoS a record under `mqtt_topic` is delivered with: the highest
/// granted to a matching filter (one copy however many match), or None.
pub fn matching_qos(filters: &[(String, u8)], mqtt_topic: &str) -> Option<u8> {
    filters
        .iter()
        .filter(|(f, _)| filter_matches(f, mqtt_topic))
        .map(|(_, q)| (*q).min(1))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo_log::{LogStore, OutRecord, TopicConfig};

    #[test]
    fn overlapping_filters_deliver_once_at_the_highest_qos() {
        let filters = vec![("s/#".to_string(), 0), ("s/+/t".to_string(), 1)];
        assert_eq!(matching_qos(&filters, "s/a/t"), Some(1));
        assert_eq!(matching_qos(&filters, "s/a/u"), Some(0));
        assert_eq!(matching_qos(&filters, "x/a/t"), None);
        assert_eq!(
            matching_qos(&[("#".into(), 2)], "s"),
            Some(1),
            "QoS 2 is delivered as 1"
        );
    }

    #[tokio::test]
    async fn a_reader_follows_the_log_and_matches_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let topic = store.create_topic("s", 1, TopicConfig::default()).unwrap();
        let log = topic.partition(0).unwrap();
        let write = |key: &str, value: &str| {
            log.append_records(
                &[OutRecord {
                    key: Some(Bytes::copy_from_slice(key.as_bytes())),
                    value: Some(Bytes::copy_from_slice(value.as_bytes())),
                    headers: Vec::new(),
                    timestamp: 1,
                }],
                None,
            )
            .unwrap();
        };
        write("s/old", "before the subscription");
        let filters: Filters = Arc::new(RwLock::new(vec![("s/a/#".to_string(), 1)]));
        let (tx, mut rx) = mpsc::channel(16);
        let reader = tokio::spawn(follow(log.clone(), "s".into(), 0, 1, filters.clone(), tx));
        write("s/b/x", "not matched");
        let progress = rx.recv().await.unwrap();
        assert!(progress.message.is_none());
        assert_eq!(progress.next_offset, 2);
        write("s/a/x", "matched");
        let d = rx.recv().await.unwrap();
        let m = d.message.unwrap();
        assert_eq!(
            (m.mqtt_topic.as_str(), &m.payload[..], m.qos),
            ("s/a/x", &b"matched"[..], 1)
        );
        assert_eq!(d.next_offset, 3);
        assert_eq!(d.partition, 0);
        filters.write().push(("s".to_string(), 0));
        write("kafka-key", "from a Kafka producer");
        let m = rx.recv().await.unwrap().message.unwrap();
        assert_eq!(
            m.mqtt_topic, "s",
            "a key that is no topic of s: the fluxo topic's name"
        );
        reader.abort();
    }
}
