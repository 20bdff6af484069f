//! The Kafka front's own metrics: requests and their latency per API,
//! connections, and what consumers fetched per topic.
//!
//! What producers appended is counted by the log itself
//! (`PartitionLog::append_totals`), because producers are not the only
//! writers; the HTTP front reads both when it renders `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use parking_lot::RwLock;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry};

/// Latency buckets in seconds: from a cached Metadata answer (~50 µs) to a
/// long poll that waited its full 30 s cap.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub struct BrokerMetrics {
    registry: Registry,
    /// One histogram per API, resolved once so a request pays no label
    /// lookup. Its count is the request count.
    latency: HashMap<i16, Histogram>,
    connections_open: IntGauge,
    connections_accepted: IntCounter,
    /// Bytes and records fetched per topic. Kept outside the registry so
    /// that reading one topic's totals never creates a series, and a
    /// deleted topic's series can go; `/metrics` renders them.
    fetched: RwLock<HashMap<String, Arc<FetchedTotals>>>,
}

#[derive(Default)]
struct FetchedTotals {
    bytes: AtomicU64,
    records: AtomicU64,
}

impl BrokerMetrics {
    pub fn new() -> BrokerMetrics {
        let registry = Registry::new();
        let latency_vec = HistogramVec::new(
            HistogramOpts::new(
                "fluxo_kafka_request_duration_seconds",
                "Time from decoding a Kafka request to its response being ready, per API",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api"],
        )
        .expect("valid histogram");
        let latency = crate::handlers::supported_keys()
            .into_iter()
            .map(|key| {
                let name = format!("{key:?}");
                (key as i16, latency_vec.with_label_values(&[name.as_str()]))
            })
            .collect();
        let connections_open = IntGauge::new(
            "fluxo_kafka_connections",
            "Kafka client connections open now",
        )
        .expect("valid gauge");
        let connections_accepted = IntCounter::new(
            "fluxo_kafka_connections_accepted_total",
            "Kafka client connections accepted since start",
        )
        .expect("valid counter");
        for c in [
            Box::new(latency_vec) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_open.clone()),
            Box::new(connections_accepted.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        BrokerMetrics {
            registry,
            latency,
            connections_open,
            connections_accepted,
            fetched: RwLock::new(HashMap::new()),
        }
    }

    /// The registry to gather when rendering `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn observe_request(&self, api: ApiKey, took: Duration) {
        if let Some(h) = self.latency.get(&(api as i16)) {
            h.observe(took.as_secs_f64());
        }
    }

    pub(crate) fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_open.inc();
        self.connections_accepted.inc();
        ConnectionGuard(self.connections_open.clone())
    }

    pub(crate) fn fetched(&self, topic: &str, bytes: u64, records: u64) {
        if bytes == 0 {
            return;
        }
        let existing = self.fetched.read().get(topic).cloned();
        let totals = match existing {
            Some(t) => t,
            None => self
                .fetched
                .write()
                .entry(topic.to_string())
                .or_default()
                .clone(),
        };
        totals.bytes.fetch_add(bytes, Ordering::Relaxed);
        totals.records.fetch_add(records, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> i64 {
        self.connections_open.get()
    }

    /// Per topic fetched from: (topic, bytes, records) since start.
    pub fn fetched_per_topic(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = self
            .fetched
            .read()
            .iter()
            .map(|(t, c)| {
                (
                    t.clone(),
                    c.bytes.load(Ordering::Relaxed),
                    c.records.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Forgets a deleted topic's totals, so `/metrics` stops reporting it.
    pub fn forget_topic(&self, topic: &str) {
        self.fetched.write().remove(topic);
    }
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics::new()
    }
}

/// Counts a connection as open until dropped.
pub(crate) struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn requests_connections_and_fetches_show_in_the_text_format() {
        let m = Arc::new(BrokerMetrics::new());
        m.observe_request(ApiKey::Produce, Duration::from_micros(300));
        m.observe_request(ApiKey::Produce, Duration::from_millis(3));
        let guard = m.connection_opened();
        m.fetched("orders", 1000, 10);
        m.fetched("orders", 500, 5);
        assert_eq!(m.connections(), 1);
        drop(guard);
        assert_eq!(m.connections(), 0);
        assert_eq!(
            m.fetched_per_topic(),
            vec![("orders".to_string(), 1500, 15)]
        );
        m.forget_topic("orders");
        assert!(m.fetched_per_topic().is_empty());

        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&m.registry().gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("fluxo_kafka_request_duration_seconds_count{api=\"Produce\"} 2"));
        assert!(text.contains("fluxo_kafka_connections_accepted_total 1"));
    }
}
