//! The `nexmark` connector: a source whose events fluxo generates itself.
//!
//! `CREATE SOURCE bids (...) WITH (connector = 'nexmark', stream = 'bid',
//! rate = '10000')` starts a generator that appends the chosen Nexmark
//! stream (bids, auctions or persons) as JSON to the source's topic, at a
//! rate or as fast as it can, up to an optional number of events. The source
//! then reads that topic like any other, so checkpoints, restarts and batch
//! reads work unchanged, and the generated events are there to inspect.
//!
//! The stream is deterministic for its seed and start time (both kept in the
//! catalog): the `k`-th event of the topic is always the same, and after a
//! restart the generator carries on from the topic's end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::OutRecord;
use fluxo_log::{LogStore, PartitionLog};
use fluxo_nexmark::{EventKind, Generator, GeneratorConfig};

use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source::{ingest_partition, IngestThread};
use crate::{opt, ConnectorInfo, ConnectorKind};

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "nexmark",
    kind: ConnectorKind::Source,
    description: "generates the Nexmark benchmark's bids, auctions or persons as JSON into the source's topic",
    options: &[
        opt("stream", false, "'bid' (default), 'auction' or 'person'"),
        opt("rate", false, "events per second; 0 (default): as fast as possible"),
        opt("max_events", false, "stop after this many events"),
        opt("seed", false, "the generator's seed (default 0)"),
        opt("start_time", false, "event time of the first event, epoch milliseconds (default: now)"),
        opt("topic", false, "the topic written (default nexmark-<source>)"),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkOptions {
    pub stream: EventKind,
    /// Events of the stream per second; 0: as fast as possible.
    pub rate: u64,
    pub max_events: Option<u64>,
    pub seed: u64,
    /// Event time of the stream's first event, epoch milliseconds.
    pub start_time_ms: i64,
    pub topic: String,
}

impl NexmarkOptions {
    /// Reads and checks the options of a nexmark source named `source`,
    /// filling in the topic and the start time when missing (the caller
    /// stores them, so that a restart continues the same stream).
    pub fn from_options(source: &str, options: &mut Options) -> Result<NexmarkOptions> {
        let stream = match options.get("stream").unwrap_or("bid") {
            "bid" | "bids" => EventKind::Bid,
            "auction" | "auctions" => EventKind::Auction,
            "person" | "persons" | "people" => EventKind::Person,
            other => {
                return Err(ConnectorError::Config(format!(
                    "stream = '{other}': a nexmark source generates 'bid', 'auction' or 'person'"
                )))
            }
        };
        if options.get("format").is_some_and(|f| f != "json") {
            return Err(ConnectorError::Config(
                "a nexmark source generates JSON: leave out format or use format = 'json'".into(),
            ));
        }
        let number = |key: &str| -> Result<Option<u64>> {
            options
                .get(key)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        ConnectorError::Config(format!(
                            "{key} must be a non-negative whole number, got '{v}'"
                        ))
                    })
                })
                .transpose()
        };
        let rate = number("rate")?.unwrap_or(0);
        let max_events = number("max_events")?;
        let seed = number("seed")?.unwrap_or(0);
        let start_time_ms = match options.get("start_time") {
            Some(v) => v.trim().parse::<i64>().map_err(|_| {
                ConnectorError::Config(format!(
                    "start_time is the first event's time in epoch milliseconds, got '{v}'"
                ))
            })?,
            None => crate::now_ms(),
        };
        let topic = options
            .get("topic")
            .map(str::to_string)
            .unwrap_or_else(|| format!("nexmark-{source}"));
        LogStore::validate_topic_name(&topic)
            .map_err(|e| ConnectorError::Config(format!("topic = '{topic}': {e}")))?;
        options
            .0
            .insert("start_time".into(), start_time_ms.to_string());
        options.0.insert("topic".into(), topic.clone());
        Ok(NexmarkOptions {
            stream,
            rate,
            max_events,
            seed,
            start_time_ms,
            topic,
        })
    }

    fn generator_config(&self) -> GeneratorConfig {
        // Event time keeps pace with the wall clock at the chosen rate; the
        // rate counts this stream's events, the generator counts all kinds.
        let share = match self.stream {
            EventKind::Bid => 46.0 / 50.0,
            EventKind::Auction => 3.0 / 50.0,
            EventKind::Person => 1.0 / 50.0,
        };
        let defaults = GeneratorConfig::default();
        GeneratorConfig {
            seed: self.seed,
            base_time_ms: self.start_time_ms,
            events_per_second: if self.rate == 0 {
                defaults.events_per_second
            } else {
                ((self.rate as f64 / share).round() as u64).max(1)
            },
            ..defaults
        }
    }
}

/// Creates the topic if needed and starts appending to it.
pub fn start(options: NexmarkOptions, store: Arc<LogStore>) -> Result<IngestThread> {
    let log = ingest_partition(&store, &options.topic)?;
    IngestThread::spawn(format!("nexmark-{}", options.topic), move |stop| {
        if let Err(e) = generate(&options, &log, &stop) {
            tracing::error!(topic = %options.topic, error = %e, "nexmark generator stopped");
        }
    })
}

const BATCH: u64 = 1000;

fn generate(options: &NexmarkOptions, log: &PartitionLog, stop: &AtomicBool) -> Result<()> {
    let mut generator = Generator::new(options.generator_config());
    let started = Instant::now();
    // Events of this stream already in the topic (from before a restart).
    let first = log.end_offset().max(0) as u64;
    let mut k = first;
    let mut json = Vec::with_capacity(512);
    while !stop.load(Ordering::Acquire) {
        let mut n = BATCH;
        if let Some(max) = options.max_events {
            if k >= max {
                return Ok(());
            }
            n = n.min(max - k);
        }
        if options.rate > 0 {
            let due = (started.elapsed().as_secs_f64() * options.rate as f64) as u64;
            let produced = k - first;
            if produced >= due {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            n = n.min(due - produced);
        }
        let mut records = Vec::with_capacity(n as usize);
        for i in 0..n {
            generator.skip_to(Generator::event_number_of(options.stream, k + i));
            let event = generator.next_event();
            json.clear();
            event.write_json(&mut json);
            records.push(OutRecord {
                value: Some(Bytes::copy_from_slice(&json)),
                timestamp: event.date_time(),
                ..Default::default()
            });
        }
        log.append_records(&records, None).map_err(|e| {
            ConnectorError::Execution(format!("cannot append to {}: {e}", options.topic))
        })?;
        k += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_and_completed() {
        let mut o = Options::from_pairs(&[("connector", "nexmark"), ("rate", "100")]);
        let n = NexmarkOptions::from_options("bids", &mut o).unwrap();
        assert_eq!(n.stream, EventKind::Bid);
        assert_eq!(n.topic, "nexmark-bids");
        assert_eq!(o.get("topic"), Some("nexmark-bids"));
        assert!(o.get("start_time").is_some());
        let mut bad = Options::from_pairs(&[("stream", "trades")]);
        let err = NexmarkOptions::from_options("x", &mut bad).unwrap_err();
        assert!(
            err.to_string().contains("'bid', 'auction' or 'person'"),
            "{err}"
        );
        let mut bad = Options::from_pairs(&[("rate", "-1")]);
        assert!(NexmarkOptions::from_options("x", &mut bad).is_err());
    }

    #[test]
    fn the_generator_fills_its_topic_and_resumes_the_same_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let mut o =
            Options::from_pairs(&[("max_events", "2500"), ("start_time", "0"), ("seed", "7")]);
        let opts = NexmarkOptions::from_options("bids", &mut o).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = store.partition("nexmark-bids", 0);
        assert!(log.is_none());
        let handle = start(opts.clone(), store.clone()).unwrap();
        let log = store.partition("nexmark-bids", 0).unwrap();
        while log.end_offset() < 2500 {
            assert!(Instant::now() < deadline, "generator too slow");
            std::thread::sleep(Duration::from_millis(10));
        }
        crate::Ingest::stop(&handle);
        assert_eq!(log.end_offset(), 2500, "max_events is respected");
        // The 1234th bid is the generator's 1234th bid, whatever the batches.
        let mut g = Generator::new(opts.generator_config());
        g.skip_to(Generator::event_number_of(EventKind::Bid, 1234));
        let mut want = Vec::new();
        g.next_event().write_json(&mut want);
        let mut bytes = log.read(1234, 1 << 20).unwrap();
        let batch = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        let got = batch
            .records
            .iter()
            .find(|r| r.offset == 1234)
            .and_then(|r| r.value.clone())
            .unwrap();
        assert_eq!(got.as_ref(), want.as_slice());
    }
}
