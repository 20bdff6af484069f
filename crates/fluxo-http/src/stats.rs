//! Throughput history: a sampler that reads the log's and the broker's
//! counters once a second and keeps the last five minutes of rates, overall,
//! per topic, and the lag of each consumer group.
//!
//! Rates come from differences of monotonic counters, so a sample missed
//! under load makes one longer interval rather than a wrong rate. A topic
//! that was deleted and recreated restarts its counters at zero; the
//! difference is then clamped to zero instead of going negative.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::{AppState, Services};

/// Samples kept: one per second for five minutes.
const HISTORY: usize = 300;

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Sample {
    /// Milliseconds since the epoch.
    pub t: i64,
    pub records_in_per_sec: f64,
    pub records_out_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
}

/// The current rates of one topic.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct TopicRates {
    pub records_in_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub records_out_per_sec: f64,
    pub bytes_out_per_sec: f64,
}

/// Totals since start, as the counters say.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    records_in: u64,
    bytes_in: u64,
    records_out: u64,
    bytes_out: u64,
}

impl Totals {
    fn rates_since(&self, before: &Totals, secs: f64) -> TopicRates {
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        TopicRates {
            records_in_per_sec: rate(self.records_in, before.records_in),
            bytes_in_per_sec: rate(self.bytes_in, before.bytes_in),
            records_out_per_sec: rate(self.records_out, before.records_out),
            bytes_out_per_sec: rate(self.bytes_out, before.bytes_out),
        }
    }
}

#[derive(Default)]
struct Inner {
    history: VecDeque<Sample>,
    last: Option<(Instant, HashMap<String, Totals>)>,
    topic_rates: HashMap<String, TopicRates>,
    lag_history: HashMap<String, VecDeque<(i64, i64)>>,
}

pub(crate) struct Stats {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Sample>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            inner: Mutex::new(Inner::default()),
            live: broadcast::channel(16).0,
        }
    }

    pub fn spawn_sampler(self: Arc<Self>, services: Services) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let stats = self.clone();
                let services = services.clone();
                // Walking partitions and groups takes locks the broker
                // uses; keep it off the async workers.
                let sampled =
                    tokio::task::spawn_blocking(move || stats.sample(&services, Instant::now()))
                        .await;
                if let Ok(Some(sample)) = sampled {
                    let _ = self.live.send(sample);
                }
            }
        })
    }

    /// Takes one sample; None for the very first, which only sets the base.
    fn sample(&self, services: &Services, now: Instant) -> Option<Sample> {
        let totals = topic_totals(services);
        let lags: Vec<(String, i64)> = match &services.broker {
            Some(broker) => broker
                .groups
                .list()
                .into_iter()
                .map(|g| {
                    let lag = broker.groups.lag(&g.group_id).iter().map(|l| l.lag).sum();
                    (g.group_id, lag)
                })
                .collect(),
            None => Vec::new(),
        };
        let t = fluxo_log::now_ms();
        let mut inner = self.inner.lock();
        for (group, lag) in &lags {
            let h = inner.lag_history.entry(group.clone()).or_default();
            h.push_back((t, *lag));
            if h.len() > HISTORY {
                h.pop_front();
            }
        }
        inner
            .lag_history
            .retain(|g, _| lags.iter().any(|(id, _)| id == g));
        let previous = inner.last.replace((now, totals.clone()));
        let (then, before) = previous?;
        let secs = now.duration_since(then).as_secs_f64().max(0.001);
        let mut sample = Sample {
            t,
            ..Sample::default()
        };
        let mut rates = HashMap::new();
        for (topic, now_totals) in &totals {
            let r = now_totals.rates_since(&before.get(topic).copied().unwrap_or_default(), secs);
            sample.records_in_per_sec += r.records_in_per_sec;
            sample.bytes_in_per_sec += r.bytes_in_per_sec;
            sample.records_out_per_sec += r.records_out_per_sec;
            sample.bytes_out_per_sec += r.bytes_out_per_sec;
            rates.insert(topic.clone(), r);
        }
        inner.topic_rates = rates;
        inner.history.push_back(sample);
        if inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        Some(sample)
    }

    pub fn topic_rates(&self, topic: &str) -> TopicRates {
        self.inner
            .lock()
            .topic_rates
            .get(topic)
            .copied()
            .unwrap_or_default()
    }

    pub fn lag_history(&self, group: &str) -> Vec<serde_json::Value> {
        self.inner
            .lock()
            .lag_history
            .get(group)
            .map(|h| {
                h.iter()
                    .map(|(t, lag)| json!({"t": t, "lag": lag}))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn history(&self) -> Vec<Sample> {
        self.inner.lock().history.iter().copied().collect()
    }
}

/// Per topic, what the log took in and consumers fetched since start;
/// nothing in engine-only mode, whose topics are on the remote cluster.
fn topic_totals(services: &Services) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    let Some(broker) = &services.broker else {
        return out;
    };
    for topic in broker.store.topics() {
        let t = out.entry(topic.name.clone()).or_default();
        for p in topic.partitions() {
            let a = p.append_totals();
            t.records_in += a.records;
            t.bytes_in += a.bytes;
        }
    }
    for (topic, bytes, records) in broker.broker_metrics.fetched_per_topic() {
        if let Some(t) = out.get_mut(&topic) {
            t.bytes_out += bytes;
            t.records_out += records;
        }
    }
    out
}

/// The counters the overview shows beside its charts; the broker's are 0
/// in engine-only mode, so the overview keeps its shape.
fn counters(services: &Services) -> serde_json::Value {
    let (mut topics, mut partitions, mut log_bytes) = (0usize, 0usize, 0u64);
    let (mut connections, mut groups) = (0, 0usize);
    if let Some(broker) = &services.broker {
        let all = broker.store.topics();
        topics = all.len();
        for t in &all {
            for p in t.partitions() {
                partitions += 1;
                log_bytes += p.offsets().size_bytes;
            }
        }
        connections = broker.broker_metrics.connections();
        groups = broker.groups.list().len();
    }
    json!({
        "now_ms": fluxo_log::now_ms(),
        "topics": topics,
        "partitions": partitions,
        "log_bytes": log_bytes,
        "connections": connections,
        "groups": groups,
        "pipelines": services.engine.pipelines().len(),
    })
}

pub(crate) async fn overview(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut out = counters(&state.services);
    out["history"] = json!(state.stats.history());
    Json(out)
}

/// `GET /api/v1/overview/live`: event `sample` every second, the newest
/// rates with the overview's counters.
pub(crate) async fn live(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.stats.live.subscribe();
    let stream = futures::stream::unfold((rx, state), |(mut rx, state)| async move {
        loop {
            match rx.recv().await {
                Ok(sample) => {
                    let mut data = counters(&state.services);
                    if let (Some(obj), serde_json::Value::Object(s)) =
                        (data.as_object_mut(), json!(sample))
                    {
                        obj.extend(s);
                    }
                    let event = Event::default().event("sample").data(data.to_string());
                    return Some((Ok(event), (rx, state)));
                }
                // A slow reader just misses samples; the next one is whole.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_over_time_and_never_negative() {
        let before = Totals {
            records_in: 100,
            bytes_in: 10_000,
            records_out: 50,
            bytes_out: 5_000,
        };
        let now = Totals {
            records_in: 300,
            bytes_in: 30_000,
            records_out: 40, // a recreated topic starts over
            bytes_out: 4_000,
        };
        let r = now.rates_since(&before, 2.0);
        assert_eq!(r.records_in_per_sec, 100.0);
        assert_eq!(r.bytes_in_per_sec, 10_000.0);
        assert_eq!(r.records_out_per_sec, 0.0);
        assert_eq!(r.bytes_out_per_sec, 0.0);
    }
}
