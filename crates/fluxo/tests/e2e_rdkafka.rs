//! The real binary driven by the `rdkafka` crate (librdkafka 2.12).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::Server;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, Timestamp, TopicPartitionList};

fn producer(bootstrap: &str, codec: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.codec", codec)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", "10000000")
        .create()
        .expect("producer")
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Reads every record of `partitions` from offset 0 until `expected` arrive.
fn consume_all(
    c: &BaseConsumer,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(
    i32,
    i64,
    Option<Vec<u8>>,
    Vec<u8>,
    Vec<(String, Vec<u8>)>,
    Timestamp,
)> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "got {} of {expected} records",
            out.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("consume error");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|hd| (hd.key.to_string(), hd.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                m.offset(),
                m.key().map(|k| k.to_vec()),
                m.payload().unwrap_or_default().to_vec(),
                headers,
                m.timestamp(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_in_every_codec_with_keys_headers_and_timestamps() {
    let server = Server::start();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("roundtrip-{codec}");
        create_topic(&server.bootstrap, &topic, 4, &[]).await;
        let p = producer(&server.bootstrap, codec);
        let n = 2000;
        let base_ts = 1_700_000_000_000i64;
        let mut deliveries = Vec::new();
        for i in 0..n {
            let key = format!("key-{}", i % 37);
            let value = format!("value-{i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "seq",
                value: Some(&i.to_string()),
            });
            let rec = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers)
                .timestamp(base_ts + i as i64);
            deliveries.push(p.send_result(rec).expect("queue"));
        }
        let mut acked = 0;
        for d in deliveries {
            d.await.expect("delivery future").expect("delivered");
            acked += 1;
        }
        assert_eq!(acked, n);
        let c = consumer(&server.bootstrap);
        let got = consume_all(&c, &topic, 4, n);
        assert_eq!(got.len(), n, "{codec}: exactly the produced records");
        let mut partition_of_key = std::collections::HashMap::new();
        let mut next_offset = std::collections::HashMap::new();
        for (partition, offset, key, value, headers, ts) in &got {
            let value = String::from_utf8(value.clone()).unwrap();
            let i: i64 = value.strip_prefix("value-").unwrap().parse().unwrap();
            assert_eq!(
                key.as_deref(),
                Some(format!("key-{}", i % 37).as_bytes()),
                "{codec}"
            );
            assert_eq!(
                headers,
                &vec![("seq".to_string(), i.to_string().into_bytes())],
                "{codec}"
            );
            assert_eq!(*ts, Timestamp::CreateTime(base_ts + i), "{codec}");
            // One key, one partition; offsets in a partition are dense from 0.
            assert_eq!(
                *partition_of_key.entry(key.clone()).or_insert(*partition),
                *partition
            );
            let expect = next_offset.entry(*partition).or_insert(0i64);
            assert_eq!(
                offset, expect,
                "{codec}: offsets dense in partition {partition}"
            );
            *expect += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_times_finds_the_first_record_at_or_after() {
    let server = Server::start();
    create_topic(&server.bootstrap, "times", 1, &[]).await;
    let p = producer(&server.bootstrap, "lz4");
    for i in 0..500i64 {
        let rec = FutureRecord::<(), _>::to("times")
            .payload("x")
            .timestamp(1_000_000 + i * 10);
        p.send(rec, Duration::from_secs(10))
            .await
            .expect("delivered");
    }
    let c = consumer(&server.bootstrap);
    for (ts, want) in [
        (1_000_000, 0),
        (1_000_005, 1),
        (1_002_500, 250),
        (1_004_990, 499),
        (1_004_991, -1),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(ts))
            .unwrap();
        let found = c
            .offsets_for_times(tpl, Duration::from_secs(10))
            .expect("offsets_for_times");
        let off = found.find_partition("times", 0).unwrap().offset();
        let want = if want < 0 {
            Offset::End
        } else {
            Offset::Offset(want)
        };
        assert_eq!(off, want, "timestamp {ts}");
    }
    let (low, high) = c
        .fetch_watermarks("times", 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!((low, high), (0, 500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_get_message_too_large_and_nothing_is_stored() {
    let server = Server::start();
    create_topic(
        &server.bootstrap,
        "small",
        1,
        &[("max.message.bytes", "10000")],
    )
    .await;
    let p = producer(&server.bootstrap, "none");
    let big = vec![b'x'; 50_000];
    let err = p
        .send(
            FutureRecord::<(), _>::to("small").payload(&big),
            Duration::from_secs(10),
        )
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            err.0,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
        ),
        "got {:?}",
        err.0
    );
    p.send(
        FutureRecord::<(), _>::to("small").payload("fits"),
        Duration::from_secs(10),
    )
    .await
    .expect("a small record still works");
    let c = consumer(&server.bootstrap);
    let (low, high) = c
        .fetch_watermarks("small", 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!((low, high), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_socket_leaves_everyone_else_served() {
    let server = Server::start();
    let addr = server.bootstrap.clone();
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        0x7fff_ffffi32.to_be_bytes().to_vec(),
        (-1i32).to_be_bytes().to_vec(),
        [&20i32.to_be_bytes()[..], &[0xff; 20]].concat(),
        // A Metadata v9 request whose topic array claims 2^31-1 entries.
        [
            &18i32.to_be_bytes()[..],
            &3i16.to_be_bytes(),
            &9i16.to_be_bytes(),
            &7i32.to_be_bytes(),
            &[0, 0],
            &[0],
            &[0xff, 0xff, 0xff, 0xff, 0x07],
        ]
        .concat(),
        // A Produce v3 request whose topic array claims 2^31-1 entries: the
        // codec would reserve ~200 GB for it.
        [
            &21i32.to_be_bytes()[..],
            &0i16.to_be_bytes(),
            &3i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &(-1i16).to_be_bytes(),
            &(-1i16).to_be_bytes(),
            &1i16.to_be_bytes(),
            &1000i32.to_be_bytes(),
            &0x7fff_ffffi32.to_be_bytes(),
        ]
        .concat(),
        // An unknown API key.
        [
            &8i32.to_be_bytes()[..],
            &999i16.to_be_bytes(),
            &0i16.to_be_bytes(),
            &1i32.to_be_bytes(),
        ]
        .concat(),
    ];
    for g in garbage {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&g);
        let mut buf = [0u8; 64];
        // The server closes the connection (read returns 0 or an error).
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the server answered garbage {g:?} instead of closing");
    }
    // ApiVersions v99 gets a v0 answer with UNSUPPORTED_VERSION (35).
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let req = [
        &8i32.to_be_bytes()[..],
        &18i16.to_be_bytes(),
        &99i16.to_be_bytes(),
        &42i32.to_be_bytes(),
    ]
    .concat();
    s.write_all(&req).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    assert_eq!(
        i32::from_be_bytes(head[4..8].try_into().unwrap()),
        42,
        "correlation id"
    );
    assert_eq!(
        i16::from_be_bytes(head[8..10].try_into().unwrap()),
        35,
        "UNSUPPORTED_VERSION"
    );
    // And a real client is still served.
    create_topic(&server.bootstrap, "after-garbage", 1, &[]).await;
    let p = producer(&server.bootstrap, "none");
    p.send(
        FutureRecord::<(), _>::to("after-garbage").payload("ok"),
        Duration::from_secs(10),
    )
    .await
    .expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_with_auto_creation_off_is_unknown_topic_or_partition() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        dir.path(),
        "127.0.0.1:0",
        &["--auto-create-topics", "false"],
    );
    let c = consumer(&server.bootstrap);
    let md = c
        .fetch_metadata(Some("nope"), Duration::from_secs(10))
        .expect("metadata");
    let t = &md.topics()[0];
    assert_eq!(
        t.error(),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
    );
    let all = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    assert!(
        all.topics().iter().all(|t| t.name() != "nope"),
        "the topic must not be created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_topics_configs_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "127.0.0.1:0", &[]);
    create_topic(
        &server.bootstrap,
        "kept",
        3,
        &[("retention.ms", "86400000")],
    )
    .await;
    let p = producer(&server.bootstrap, "zstd");
    for i in 0..300 {
        p.send(
            FutureRecord::to("kept")
                .key(&format!("k{i}"))
                .payload(&format!("v{i}")),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
    }
    drop(p);
    assert!(server.stop().success(), "clean exit on SIGTERM");
    let server = Server::start_in(dir.path(), "127.0.0.1:0", &[]);
    let c = consumer(&server.bootstrap);
    let got = consume_all(&c, "kept", 3, 300);
    let mut values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.3.clone()).unwrap())
        .collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 300);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &server.bootstrap)
        .create()
        .unwrap();
    let configs = admin
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic("kept")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let config = configs[0].as_ref().unwrap();
    assert_eq!(
        config.get("retention.ms").and_then(|e| e.value.as_deref()),
        Some("86400000")
    );
}

/// Values of every record a consumer with `isolation.level` reads from the
/// start of `topic` (one partition) until it is idle for a second.
fn read_all_values(bootstrap: &str, topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assign");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut idle_since = std::time::Instant::now();
    while idle_since.elapsed() < Duration::from_secs(2) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume error");
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
            idle_since = std::time::Instant::now();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_abort_as_read_committed_consumers_expect() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let server = Server::start();
    let topic = "txn-rdkafka";
    create_topic(&server.bootstrap, topic, 1, &[]).await;
    let bootstrap = server.bootstrap.clone();
    let (committed, everything) = tokio::task::spawn_blocking(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "rdkafka-txn-test")
            .create()
            .expect("producer");
        let timeout = Duration::from_secs(30);
        p.init_transactions(timeout).expect("init_transactions");
        for (round, commit) in [(0, true), (1, false), (2, true)] {
            p.begin_transaction().expect("begin");
            for i in 0..5 {
                let value = format!("{round}-{i}");
                p.send(BaseRecord::<(), str>::to(topic).payload(&value))
                    .expect("queue");
            }
            p.flush(timeout).expect("flush");
            if commit {
                p.commit_transaction(timeout).expect("commit");
            } else {
                p.abort_transaction(timeout).expect("abort");
            }
        }
        (
            read_all_values(&bootstrap, topic, "read_committed"),
            read_all_values(&bootstrap, topic, "read_uncommitted"),
        )
    })
    .await
    .unwrap();
    let want: Vec<String> = [0, 2]
        .iter()
        .flat_map(|r| (0..5).map(move |i| format!("{r}-{i}")))
        .collect();
    assert_eq!(committed, want, "read_committed: the committed rounds only");
    assert_eq!(
        everything.len(),
        15,
        "read_uncommitted: the aborted round too"
    );
}
