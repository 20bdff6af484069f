//! `fluxo serve --demo`: an online shop, live. A generator writes orders
//! and clicks into two topics and the shop's customers (upserted by id, a
//! tier upgrade now and then) into a third; SQL turns them into revenue per
//! minute, top products, a fraud rule, clicks per window and a unified
//! customer profile (the customers table joined with each customer's orders
//! and clicks, kept up to date as any of them changes); sinks send fraud
//! alerts to a topic and the revenue to a Delta table; a saved dashboard
//! charts it all, so the console's first page moves within seconds.
//!
//! Everything is created with IF NOT EXISTS (the dashboard by name), so a
//! second start over the same data directory picks up where it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fluxo_http::dashboards::{Chart, Dashboard};
use fluxo_http::DashboardStore;
use fluxo_log::partitioner::partition_for_key;
use fluxo_log::OutRecord;
use fluxo_log::{LogStore, TopicConfig};
use fluxo_sql::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: i32 = 3;
/// Orders per second on average; the rate swings around it over two
/// minutes, so the charts have a shape.
const ORDERS_PER_SEC: f64 = 40.0;
const CLICKS_PER_ORDER: f64 = 6.0;
const USERS: u64 = 5_000;
/// How often a burst of fraudulent orders comes, on average.
const FRAUD_EVERY: Duration = Duration::from_secs(15);
/// How often a customer moves up a tier, on average.
const UPGRADE_EVERY: Duration = Duration::from_secs(2);

const SETUP: &[&str] = &[
    "CREATE SOURCE IF NOT EXISTS orders (order_id BIGINT, user_id BIGINT, product TEXT, \
     category TEXT, quantity INT, price DOUBLE, amount DOUBLE, country TEXT, ts TIMESTAMP, \
     WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
     WITH (connector = 'topic', topic = 'orders', format = 'json')",
    "CREATE SOURCE IF NOT EXISTS clicks (user_id BIGINT, page TEXT, product TEXT, ts TIMESTAMP, \
     WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
     WITH (connector = 'topic', topic = 'clicks', format = 'json')",
    "CREATE TABLE IF NOT EXISTS customers (id BIGINT, name TEXT, tier TEXT, country TEXT, \
     PRIMARY KEY (id)) \
     WITH (connector = 'topic', topic = 'customers', format = 'json')",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS customer_profile AS \
     SELECT c.id, c.name, c.tier, c.country, o.orders, o.spend, o.last_order, \
            k.clicks, k.last_click \
     FROM customers c \
     JOIN (SELECT user_id, count(*) AS orders, sum(amount) AS spend, max(ts) AS last_order \
           FROM orders GROUP BY user_id) o ON o.user_id = c.id \
     LEFT JOIN (SELECT user_id, count(*) AS clicks, max(ts) AS last_click \
                FROM clicks GROUP BY user_id) k ON k.user_id = c.id",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS top_customers AS \
     SELECT name, tier, spend, orders, rn FROM ( \
       SELECT name, tier, spend, orders, ROW_NUMBER() OVER (ORDER BY spend DESC, id) AS rn \
       FROM customer_profile) \
     WHERE rn <= 10",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS spend_per_tier AS \
     SELECT tier, count(*) AS customers, sum(spend) AS spend \
     FROM customer_profile GROUP BY tier",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS revenue_per_minute AS \
     SELECT window_start, window_end, count(*) AS orders, sum(amount) AS revenue \
     FROM HOP(orders, ts, INTERVAL '5' SECOND, INTERVAL '1' MINUTE) \
     GROUP BY window_start, window_end",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS top_products AS \
     SELECT product, category, count(*) AS orders, sum(amount) AS revenue \
     FROM orders GROUP BY product, category",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS suspicious_users AS \
     SELECT user_id, window_start, window_end, count(*) AS orders, sum(amount) AS total, \
            count(DISTINCT country) AS countries \
     FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) \
     GROUP BY user_id, window_start, window_end \
     HAVING count(*) >= 4",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS clicks_per_window AS \
     SELECT window_start, window_end, count(*) AS clicks, count(DISTINCT user_id) AS visitors \
     FROM TUMBLE(clicks, ts, INTERVAL '5' SECOND) \
     GROUP BY window_start, window_end",
    "CREATE SINK IF NOT EXISTS fraud_alerts FROM suspicious_users \
     WITH (connector = 'topic', topic = 'fraud-alerts', format = 'json')",
    "CREATE SINK IF NOT EXISTS revenue_lake FROM revenue_per_minute \
     WITH (connector = 'delta', path = 'lake/revenue_per_minute')",
];

/// (product, category, price)
const PRODUCTS: &[(&str, &str, f64)] = &[
    ("espresso machine", "kitchen", 249.0),
    ("coffee beans 1kg", "kitchen", 24.5),
    ("chef's knife", "kitchen", 89.0),
    ("running shoes", "sport", 119.0),
    ("yoga mat", "sport", 35.0),
    ("water bottle", "sport", 18.0),
    ("headphones", "electronics", 199.0),
    ("phone charger", "electronics", 19.9),
    ("smart watch", "electronics", 329.0),
    ("e-reader", "electronics", 139.0),
    ("backpack", "travel", 79.0),
    ("suitcase", "travel", 189.0),
    ("sunglasses", "travel", 59.0),
    ("novel", "books", 14.9),
    ("cookbook", "books", 29.0),
    ("board game", "toys", 44.0),
];

const COUNTRIES: &[&str] = &["PT", "BR", "ES", "FR", "DE", "US", "GB", "NL", "IT", "AO"];
const FIRST_NAMES: &[&str] = &[
    "Ana", "Bruno", "Carla", "Diogo", "Elena", "Filipe", "Gabriela", "Hugo", "Inês", "João",
    "Kiara", "Luís", "Marta", "Nuno", "Olga", "Pedro", "Rita", "Sofia", "Tiago", "Vera",
];
const LAST_NAMES: &[&str] = &[
    "Silva",
    "Santos",
    "Ferreira",
    "Pereira",
    "Oliveira",
    "Costa",
    "Rodrigues",
    "Martins",
    "Sousa",
    "Fernandes",
    "Gomes",
    "Lopes",
    "Marques",
    "Alves",
    "Almeida",
    "Ribeiro",
];
const TIERS: &[&str] = &["bronze", "silver", "gold", "platinum"];
const PAGES: &[&str] = &[
    "/",
    "/search",
    "/product",
    "/product",
    "/product",
    "/cart",
    "/checkout",
];

/// The running generator.
pub struct Demo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Demo {
    /// Stops the generator and waits for it: it writes to the store, which
    /// closes next.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates the demo's topics, pipelines and dashboard, and starts the
/// generator.
pub async fn start(
    store: Arc<LogStore>,
    engine: Arc<Engine>,
    dashboards: Arc<DashboardStore>,
) -> anyhow::Result<Demo> {
    // fraud-alerts too, though its sink would create it: a consumer can
    // subscribe before the first alert.
    for (name, partitions) in [
        ("orders", PARTITIONS),
        ("clicks", PARTITIONS),
        ("customers", PARTITIONS),
        ("fraud-alerts", 1),
    ] {
        if store.topic(name).is_none() {
            // An hour is plenty for a demo and keeps its disk use flat
            // (retention drops whole segments, so they roll every 10 min).
            let config =
                TopicConfig::from_pairs([("retention.ms", "3600000"), ("segment.ms", "600000")])?;
            store
                .create_topic(name, partitions, config)
                .with_context(|| format!("cannot create the demo topic {name}"))?;
        }
    }
    for statement in SETUP {
        engine
            .execute(statement)
            .await
            .with_context(|| format!("the demo's setup failed at: {statement}"))?;
    }
    let views = engine.view_names();
    dashboards
        .ensure_named(dashboard(), &views)
        .map_err(|e| anyhow::anyhow!("cannot save the demo dashboard: {}", e.1))?;
    let stop = Arc::new(AtomicBool::new(false));
    let generator = Generator::new(store, stop.clone());
    let thread = std::thread::Builder::new()
        .name("demo-generator".into())
        .spawn(move || generator.run())
        .context("cannot start the demo generator")?;
    Ok(Demo {
        stop,
        thread: Some(thread),
    })
}

fn chart(
    title: &str,
    view: &str,
    kind: &str,
    x: Option<&str>,
    y: &[&str],
    limit: Option<u32>,
) -> Chart {
    Chart {
        id: String::new(),
        title: title.into(),
        view: view.into(),
        kind: kind.into(),
        x: x.map(Into::into),
        y: y.iter().map(|s| s.to_string()).collect(),
        series: None,
        limit,
    }
}

fn dashboard() -> Dashboard {
    Dashboard {
        id: String::new(),
        name: "Shop live".into(),
        charts: vec![
            chart(
                "Revenue, last minute",
                "revenue_per_minute",
                "line",
                Some("window_end"),
                &["revenue"],
                None,
            ),
            chart(
                "Orders, last minute",
                "revenue_per_minute",
                "number",
                Some("window_end"),
                &["orders"],
                None,
            ),
            chart(
                "Top products by revenue",
                "top_products",
                "bar",
                Some("product"),
                &["revenue"],
                Some(10),
            ),
            chart(
                "Clicks and visitors per 5 s",
                "clicks_per_window",
                "line",
                Some("window_end"),
                &["clicks", "visitors"],
                None,
            ),
            chart(
                "Suspicious users (4+ orders in 10 s)",
                "suspicious_users",
                "table",
                Some("window_end"),
                &[],
                Some(10),
            ),
            chart(
                "Revenue, all time",
                "top_products",
                "number",
                None,
                &["revenue"],
                None,
            ),
            chart(
                "Top customers by spend (profile: customers ⋈ orders ⋈ clicks)",
                "top_customers",
                "bar",
                Some("name"),
                &["spend"],
                Some(10),
            ),
            chart(
                "Spend per customer tier",
                "spend_per_tier",
                "bar",
                Some("tier"),
                &["spend"],
                None,
            ),
            chart(
                "Customer profiles",
                "customer_profile",
                "table",
                Some("last_order"),
                &[],
                Some(10),
            ),
        ],
    }
}

struct Generator {
    store: Arc<LogStore>,
    stop: Arc<AtomicBool>,
    rng: StdRng,
    next_order: i64,
    next_fraud: std::time::Instant,
    next_upgrade: std::time::Instant,
    /// Each customer's tier, as last written.
    tiers: Vec<usize>,
}

impl Generator {
    fn new(store: Arc<LogStore>, stop: Arc<AtomicBool>) -> Generator {
        let next_order = store
            .topic("orders")
            .map(|t| t.partitions().iter().map(|p| p.end_offset()).sum())
            .unwrap_or(0);
        Generator {
            store,
            stop,
            rng: StdRng::from_entropy(),
            next_order,
            next_fraud: std::time::Instant::now() + Duration::from_secs(5),
            next_upgrade: std::time::Instant::now() + UPGRADE_EVERY,
            tiers: Vec::new(),
        }
    }

    /// Every customer, once: on a data directory that has them, the rows
    /// are written again (the table keeps the newest; nothing changes).
    fn customers(&mut self) -> Vec<(u64, String)> {
        let mut rng = StdRng::seed_from_u64(7);
        self.tiers = (0..=USERS)
            .map(|_| {
                if rng.gen_bool(0.7) {
                    0
                } else {
                    rng.gen_range(1..3)
                }
            })
            .collect();
        (1..=USERS)
            .map(|id| (id, customer_json(id, TIERS[self.tiers[id as usize]])))
            .collect()
    }

    /// A customer moves up a tier (written whole, as an upsert).
    fn upgrade(&mut self) -> (u64, String) {
        let id = self.rng.gen_range(1..=USERS);
        let tier = &mut self.tiers[id as usize];
        *tier = (*tier + 1).min(TIERS.len() - 1);
        (id, customer_json(id, TIERS[*tier]))
    }

    /// Writes a tick's events every 100 ms until stopped (or its topics
    /// are deleted).
    fn run(mut self) {
        let customers = self.customers();
        if let Err(e) = self.write("customers", customers) {
            tracing::warn!("demo generator stopped: {e:#}");
            return;
        }
        let tick = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let (mut owed_orders, mut owed_clicks) = (0.0f64, 0.0f64);
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(tick);
            let t = started.elapsed().as_secs_f64();
            let swing = 1.0 + 0.5 * (t * std::f64::consts::TAU / 120.0).sin();
            owed_orders +=
                ORDERS_PER_SEC * swing * tick.as_secs_f64() * self.rng.gen_range(0.6..1.4);
            owed_clicks += ORDERS_PER_SEC * CLICKS_PER_ORDER * swing * tick.as_secs_f64();
            let now = fluxo_log::now_ms();
            let mut orders = Vec::new();
            while owed_orders >= 1.0 {
                owed_orders -= 1.0;
                let user = self.rng.gen_range(1..=USERS);
                orders.push(self.order(user, now, None));
            }
            if std::time::Instant::now() >= self.next_fraud {
                orders.extend(self.fraud_burst(now));
                let jitter = self.rng.gen_range(0.5..1.5);
                self.next_fraud = std::time::Instant::now() + FRAUD_EVERY.mul_f64(jitter);
            }
            let mut clicks = Vec::new();
            while owed_clicks >= 1.0 {
                owed_clicks -= 1.0;
                clicks.push(self.click(now));
            }
            let mut upgrades = Vec::new();
            if std::time::Instant::now() >= self.next_upgrade {
                upgrades.push(self.upgrade());
                let jitter = self.rng.gen_range(0.5..1.5);
                self.next_upgrade = std::time::Instant::now() + UPGRADE_EVERY.mul_f64(jitter);
            }
            if let Err(e) = self
                .write("orders", orders)
                .and_then(|()| self.write("clicks", clicks))
                .and_then(|()| self.write("customers", upgrades))
            {
                tracing::warn!("demo generator stopped: {e:#}");
                return;
            }
        }
    }

    fn order(&mut self, user: u64, now: i64, country: Option<&str>) -> (u64, String) {
        let (product, category, price) = PRODUCTS[self.rng.gen_range(0..PRODUCTS.len())];
        let quantity: i64 = if self.rng.gen_bool(0.8) {
            1
        } else {
            self.rng.gen_range(2..=4)
        };
        let country = country.unwrap_or(COUNTRIES[self.rng.gen_range(0..COUNTRIES.len())]);
        self.next_order += 1;
        let value = serde_json::json!({
            "order_id": self.next_order,
            "user_id": user,
            "product": product,
            "category": category,
            "quantity": quantity,
            "price": price,
            "amount": (price * quantity as f64 * 100.0).round() / 100.0,
            "country": country,
            "ts": iso(now),
        });
        (user, value.to_string())
    }

    /// One stolen card: many pricey orders from one user, in several
    /// countries, within a second or two.
    fn fraud_burst(&mut self, now: i64) -> Vec<(u64, String)> {
        let user = self.rng.gen_range(1..=USERS);
        (0..self.rng.gen_range(5..=8))
            .map(|i| {
                let country = COUNTRIES[self.rng.gen_range(0..COUNTRIES.len())];
                self.order(user, now - i * 150, Some(country))
            })
            .collect()
    }

    fn click(&mut self, now: i64) -> (u64, String) {
        let user = self.rng.gen_range(1..=USERS);
        let page = PAGES[self.rng.gen_range(0..PAGES.len())];
        let product =
            (page == "/product").then(|| PRODUCTS[self.rng.gen_range(0..PRODUCTS.len())].0);
        let value = serde_json::json!({
            "user_id": user,
            "page": page,
            "product": product,
            "ts": iso(now - self.rng.gen_range(0..100)),
        });
        (user, value.to_string())
    }

    /// Appends events keyed by user, so a user's events stay in order.
    fn write(&self, topic: &str, events: Vec<(u64, String)>) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let topic = self
            .store
            .topic(topic)
            .with_context(|| format!("the demo topic {topic} was deleted"))?;
        let count = topic.partition_count();
        let now = fluxo_log::now_ms();
        let mut by_partition: Vec<Vec<OutRecord>> = vec![Vec::new(); count as usize];
        for (user, value) in events {
            let key = Bytes::from(user.to_string());
            let p = partition_for_key(&key, count) as usize;
            by_partition[p].push(OutRecord {
                key: Some(key),
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
                timestamp: now,
            });
        }
        for (p, records) in by_partition.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let log = topic
                .partition(p as i32)
                .with_context(|| format!("partition {p} of {} vanished", topic.name))?;
            log.append_records(&records, None)?;
        }
        Ok(())
    }
}

/// A customer's row; name and country follow from the id, so an upgrade
/// rewrites the same person.
fn customer_json(id: u64, tier: &str) -> String {
    let i = id as usize;
    let name = format!(
        "{} {}",
        FIRST_NAMES[(i * 7) % FIRST_NAMES.len()],
        LAST_NAMES[(i * 13 + i / FIRST_NAMES.len()) % LAST_NAMES.len()]
    );
    let country = COUNTRIES[(i * 3) % COUNTRIES.len()];
    serde_json::json!({ "id": id, "name": name, "tier": tier, "country": country }).to_string()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_the_sources_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let mut g = Generator::new(store, Arc::new(AtomicBool::new(false)));
        let (user, order) = g.order(7, 1_764_619_200_000, None);
        let v: serde_json::Value = serde_json::from_str(&order).unwrap();
        assert_eq!(user, 7);
        assert_eq!(v["ts"], "2025-12-01T20:00:00.000Z");
        let amount = v["amount"].as_f64().unwrap();
        let expected = v["price"].as_f64().unwrap() * v["quantity"].as_f64().unwrap();
        assert!((amount - expected).abs() < 0.01);
        let burst = g.fraud_burst(1_764_619_200_000);
        assert!(burst.len() >= 5, "a burst trips the 4-orders rule");
        assert!(burst.iter().all(|(u, _)| *u == burst[0].0));
        let customers = g.customers();
        assert_eq!(customers.len() as u64, USERS);
        let (id, row) = g.upgrade();
        let v: serde_json::Value = serde_json::from_str(&row).unwrap();
        assert_eq!(v["id"], id);
        assert!(TIERS.contains(&v["tier"].as_str().unwrap()));
    }
}
