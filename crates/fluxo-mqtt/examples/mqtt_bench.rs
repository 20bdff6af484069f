//! QoS 1 publish throughput of an MQTT broker with many devices at once:
//! each device is one connection publishing `--messages` QoS 1 messages to
//! its own topic with up to `--inflight` unacknowledged, and the clock
//! stops when the last PUBACK arrives. Run it against fluxo and against
//! mosquitto on the same machine (scripts/bench-mqtt.sh does both).
//!
//! cargo run --release -p fluxo-mqtt --example mqtt_bench -- 127.0.0.1:1883 \
//!     --devices 100 --messages 1000 --size 100

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

struct Args {
    addr: String,
    devices: usize,
    messages: usize,
    size: usize,
    inflight: u16,
    topic: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:1883".into(),
        devices: 100,
        messages: 1000,
        size: 100,
        inflight: 32,
        topic: "bench".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match a.as_str() {
            "--devices" => args.devices = value().parse().expect("--devices N"),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            "--size" => args.size = value().parse().expect("--size BYTES"),
            "--inflight" => args.inflight = value().parse().expect("--inflight N"),
            "--topic" => args.topic = value(),
            addr => args.addr = addr.to_string(),
        }
    }
    args
}

async fn device(args: std::sync::Arc<Args>, n: usize) -> Duration {
    let (host, port) = args.addr.rsplit_once(':').expect("HOST:PORT");
    let mut options = MqttOptions::new(
        format!("bench-{n}-{}", std::process::id()),
        host,
        port.parse().expect("a port"),
    );
    options.set_inflight(args.inflight);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = AsyncClient::new(options, args.inflight as usize * 2);
    let topic = format!("{}/dev-{n}/reading", args.topic);
    let payload = vec![b'x'; args.size];
    let messages = args.messages;
    let publisher = tokio::spawn(async move {
        for _ in 0..messages {
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                .await
                .expect("queue a publish");
        }
        client
    });
    let started = Instant::now();
    let mut acked = 0;
    while acked < messages {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("device {n}: {e}"),
        }
    }
    let elapsed = started.elapsed();
    let client = publisher.await.expect("the publisher");
    let _ = client.disconnect().await;
    elapsed
}

#[tokio::main]
async fn main() {
    let args = std::sync::Arc::new(parse_args());
    let started = Instant::now();
    let devices: Vec<_> = (0..args.devices)
        .map(|n| tokio::spawn(device(args.clone(), n)))
        .collect();
    for d in devices {
        d.await.expect("a device");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = args.devices * args.messages;
    println!(
        "{} devices x {} QoS 1 messages of {} B: {:.0} msg/s ({:.2} s)",
        args.devices,
        args.messages,
        args.size,
        total as f64 / elapsed,
        elapsed
    );
}
