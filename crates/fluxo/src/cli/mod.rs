//! Client verbs that talk to a running server: over the Kafka protocol,
//! and (`sql`, parts of `topic describe`) over the HTTP API.

pub mod consume;
pub mod group;
pub mod http_api;
pub mod produce;
pub mod sql;
pub mod topic;

use anyhow::{bail, Context};
use fluxo_client::Client;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// The server to talk to.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Kafka address of a running fluxo (or any Kafka broker).
    #[arg(
        long,
        short = 'b',
        default_value = "127.0.0.1:9092",
        env = "FLUXO_BOOTSTRAP"
    )]
    pub bootstrap: String,
}

impl Connection {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.bootstrap).await?)
    }
}

/// Explains a Kafka error code in words a user can act on.
pub fn describe_error(code: i16, message: Option<&StrBytes>) -> String {
    let name = ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error {code}"));
    match message {
        Some(m) if !m.is_empty() => format!("{name}: {}", m.as_str()),
        _ => name,
    }
}

/// Metadata for some topics (all when `topics` is None), without creating any.
pub async fn metadata(
    client: &Client,
    topics: Option<&[String]>,
) -> anyhow::Result<MetadataResponse> {
    let mut req = MetadataRequest::default();
    req.allow_auto_topic_creation = false;
    req.topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                let mut mt = MetadataRequestTopic::default();
                mt.name = Some(TopicName(StrBytes::from_string(t.clone())));
                mt
            })
            .collect()
    });
    client.send(&req).await.context("metadata request failed")
}

/// The partition count of one topic, with a clear error if it is missing.
pub async fn partition_count(client: &Client, topic: &str) -> anyhow::Result<i32> {
    let md = metadata(client, Some(&[topic.to_string()])).await?;
    let Some(t) = md.topics.first() else {
        bail!("the server returned no metadata for '{topic}'")
    };
    if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
        bail!("topic '{topic}' does not exist; create it with `fluxo topic create {topic}`");
    }
    if t.error_code != 0 {
        bail!("topic '{topic}': {}", describe_error(t.error_code, None));
    }
    Ok(t.partitions.len() as i32)
}
