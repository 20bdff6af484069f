//! fluxo's Kafka wire-protocol front.
//!
//! [`serve`] accepts TCP connections and speaks the Kafka protocol on them,
//! using the `kafka-protocol` crate for every message. Each connection has
//! a reader that frames, decodes and dispatches requests, and a writer that
//! sends responses strictly in request order, so clients may pipeline.
//! Each API family has its own module under [`handlers`].
//!
//! A handler does its ordering-sensitive work (appending to the log,
//! changing metadata) before the reader moves on to the next request, and
//! returns a future for whatever may wait (an fsync for acks=all, a long
//! poll for Fetch). That keeps per-partition order equal to request order
//! while one connection's fsyncs and long polls overlap.
//!
//! Bad input never takes the server down: an oversized or malformed frame
//! closes only that connection (and is logged); request-level problems get
//! Kafka's own error codes.

pub mod errors;
pub mod handlers;
pub mod metrics;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use fluxo_log::LogStore;

pub use server::{serve, ServerHandle};

/// Settings of the Kafka front that are not per topic.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// `auto.create.topics.enable`: Metadata for an unknown topic creates it.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic.
    pub default_partitions: i32,
    /// `socket.request.max.bytes`: larger frames close the connection.
    pub max_request_bytes: usize,
    /// Host and port given to clients in Metadata; when None, the address
    /// the client connected to.
    pub advertised_addr: Option<SocketAddr>,
    /// SASL/PLAIN users; when set, every connection authenticates first.
    pub sasl_plain: Option<handlers::sasl::PlainUsers>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
            advertised_addr: None,
            sasl_plain: None,
        }
    }
}

/// Everything a request handler needs.
pub struct Broker {
    pub store: Arc<LogStore>,
    pub groups: Arc<fluxo_groups::GroupCoordinator>,
    pub config: BrokerConfig,
    pub cluster_id: String,
    pub metrics: Arc<metrics::BrokerMetrics>,
    pub transactions: Arc<fluxo_txn::TxnCoordinator>,
}

impl Broker {
    pub fn new(
        store: Arc<LogStore>,
        groups: Arc<fluxo_groups::GroupCoordinator>,
        transactions: Arc<fluxo_txn::TxnCoordinator>,
        config: BrokerConfig,
    ) -> Result<Broker, fluxo_log::LogError> {
        let cluster_id = store.cluster_id()?;
        Ok(Broker {
            store,
            groups,
            config,
            cluster_id,
            metrics: Arc::new(metrics::BrokerMetrics::new()),
            transactions,
        })
    }
}
