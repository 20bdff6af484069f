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
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// Kafka address of a running fluxo (or any Kafka broker).
    #[arg(
        long,
        short = 'b',
        default_value = "127.0.0.1:9092",
        env = "FLUXO_BOOTSTRAP"
    )]
    pub bootstrap: String,
    /// plaintext, ssl (TLS), sasl_plaintext or sasl_ssl (SASL/PLAIN with
    /// --sasl-username and --sasl-password), as Kafka's security.protocol
    #[arg(long, default_value = "plaintext", env = "FLUXO_SECURITY_PROTOCOL")]
    pub security_protocol: String,
    /// With ssl or sasl_ssl: a PEM file of the CA certificates the broker's
    /// certificate must chain to [default: the system's]
    #[arg(long, env = "FLUXO_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<std::path::PathBuf>,
    /// With sasl_*: the user to authenticate as
    #[arg(long, env = "FLUXO_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// With sasl_*: the password (better through the environment)
    #[arg(long, env = "FLUXO_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field("security_protocol", &self.security_protocol)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Connection {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let security = fluxo_client::security::Security::from_settings(
            &self.security_protocol,
            self.ssl_ca_location.as_deref(),
            self.sasl_username.clone(),
            self.sasl_password.clone(),
            "--",
        )?;
        Ok(Client::connect_with(&self.bootstrap, &security).await?)
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
