//! The TOML config file of `fluxo serve`, and how it merges with flags.
//!
//! Precedence, highest first: a command-line flag, its `FLUXO_*`
//! environment variable, the config file, the built-in default. Unknown
//! keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Relative paths are taken from the config file's directory.
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub http: ListenerSection,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub mqtt: MqttSection,
    /// The schema registry's listener.
    #[serde(default)]
    pub registry: ListenerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub groups: GroupsSection,
    #[serde(default)]
    pub transactions: TransactionsSection,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransactionsSection {
    /// `transaction.max.timeout.ms` (default 900000, as Kafka).
    pub max_timeout_ms: Option<i32>,
    /// How often timed-out transactions are aborted (default 1000 ms).
    pub abort_check_interval_ms: Option<u64>,
    /// `transactional.id.expiration.ms` (default 604800000, 7 days).
    pub id_expiration_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub addr: Option<SocketAddr>,
    pub advertised_addr: Option<SocketAddr>,
    pub auto_create_topics: Option<bool>,
    pub num_partitions: Option<i32>,
    pub max_request_bytes: Option<usize>,
    /// SASL/PLAIN users (`{ alice = "password" }`); set, every client
    /// authenticates. Its Debug shows the names only.
    pub sasl_plain_users: Option<fluxo_kafka::handlers::sasl::PlainUsers>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub addr: Option<SocketAddr>,
}

#[derive(Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    pub addr: Option<SocketAddr>,
    /// The user a password logs in.
    pub user: Option<String>,
    /// Unset: trust.
    pub password: Option<String>,
}

impl std::fmt::Debug for PostgresSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSection")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub addr: Option<SocketAddr>,
    /// The user name devices connect with when a password is set.
    pub user: Option<String>,
    /// Unset: any device connects.
    pub password: Option<String>,
}

impl std::fmt::Debug for MqttSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSection")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub retention_check_secs: Option<u64>,
    pub log_cleaner_backoff_ms: Option<u64>,
    pub log_flush_offset_checkpoint_interval_ms: Option<u64>,
    pub log_cleaner_threads: Option<usize>,
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupsSection {
    pub min_session_timeout_ms: Option<u64>,
    pub max_session_timeout_ms: Option<u64>,
    pub initial_rebalance_delay_ms: Option<u64>,
    pub offsets_retention_minutes: Option<u64>,
    /// KIP-848 groups: `group.consumer.heartbeat.interval.ms`.
    pub consumer_heartbeat_interval_ms: Option<u64>,
    /// KIP-848 groups: `group.consumer.session.timeout.ms`.
    pub consumer_session_timeout_ms: Option<u64>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut config = ConfigFile::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        if let Some(dir) = &config.data_dir {
            if dir.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                config.data_dir = Some(base.join(dir));
            }
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        // toml's message names the line, the column and the offending key.
        Ok(toml::from_str(text)?)
    }

    pub fn transaction_config(&self) -> fluxo_txn::TxnConfig {
        let mut config = fluxo_txn::TxnConfig::default();
        if let Some(ms) = self.transactions.max_timeout_ms {
            config.max_timeout_ms = ms;
        }
        if let Some(ms) = self.transactions.abort_check_interval_ms {
            config.abort_check_interval = Duration::from_millis(ms.max(10));
        }
        if let Some(ms) = self.transactions.id_expiration_ms {
            config.id_expiration = Duration::from_millis(ms);
        }
        config
    }

    pub fn group_config(&self) -> fluxo_groups::GroupConfig {
        let mut config = fluxo_groups::GroupConfig::default();
        let g = &self.groups;
        if let Some(ms) = g.min_session_timeout_ms {
            config.min_session_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = g.max_session_timeout_ms {
            config.max_session_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = g.initial_rebalance_delay_ms {
            config.initial_rebalance_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = g.consumer_heartbeat_interval_ms {
            config.consumer_heartbeat_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = g.consumer_session_timeout_ms {
            config.consumer_session_timeout = Duration::from_millis(ms);
        }
        if let Some(minutes) = g.offsets_retention_minutes {
            config.offsets_retention = Duration::from_secs(minutes.saturating_mul(60));
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section() {
        let config = ConfigFile::parse(
            r#"
            data_dir = "/var/lib/fluxo"
            [kafka]
            addr = "0.0.0.0:9092"
            advertised_addr = "10.0.0.5:9092"
            auto_create_topics = false
            num_partitions = 6
            max_request_bytes = 1048576
            [http]
            addr = "127.0.0.1:0"
            [postgres]
            addr = "127.0.0.1:0"
            user = "app"
            password = "s3cret"
            [mqtt]
            addr = "127.0.0.1:1884"
            user = "devices"
            password = "mq-s3cret"
            [log]
            retention_check_secs = 5
            log_cleaner_threads = 2
            log_flush_offset_checkpoint_interval_ms = 1000
            [groups]
            min_session_timeout_ms = 500
            offsets_retention_minutes = 60
            consumer_heartbeat_interval_ms = 500
            consumer_session_timeout_ms = 6000
            "#,
        )
        .unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from("/var/lib/fluxo")));
        assert_eq!(config.kafka.addr, Some("0.0.0.0:9092".parse().unwrap()));
        assert_eq!(config.kafka.auto_create_topics, Some(false));
        assert_eq!(config.kafka.num_partitions, Some(6));
        assert_eq!(config.log.retention_check_secs, Some(5));
        assert_eq!(config.log.log_cleaner_threads, Some(2));
        assert_eq!(
            config.log.log_flush_offset_checkpoint_interval_ms,
            Some(1000)
        );
        assert_eq!(config.postgres.user.as_deref(), Some("app"));
        assert_eq!(config.postgres.password.as_deref(), Some("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(config.mqtt.addr, Some("127.0.0.1:1884".parse().unwrap()));
        assert_eq!(config.mqtt.user.as_deref(), Some("devices"));
        assert_eq!(config.mqtt.password.as_deref(), Some("mq-s3cret"));
        let groups = config.group_config();
        assert_eq!(groups.min_session_timeout, Duration::from_millis(500));
        assert_eq!(groups.offsets_retention, Duration::from_secs(3600));
        assert_eq!(
            groups.consumer_heartbeat_interval,
            Duration::from_millis(500)
        );
        assert_eq!(groups.consumer_session_timeout, Duration::from_secs(6));
        // Unset keys keep the coordinator's defaults.
        assert_eq!(
            groups.max_session_timeout,
            fluxo_groups::GroupConfig::default().max_session_timeout
        );
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(ConfigFile::parse("").unwrap(), ConfigFile::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_precise_errors() {
        let err = ConfigFile::parse("[kafka]\nadress = \"127.0.0.1:1\"\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("adress"), "{message}");
        let err = ConfigFile::parse("[kafka]\naddr = \"nowhere\"\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("line 2"), "{message}");
        let err = ConfigFile::parse("[kafka]\nnum_partitions = \"six\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("num_partitions"));
    }

    #[test]
    fn relative_data_dir_is_taken_from_the_file_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fluxo.toml");
        std::fs::write(&path, "data_dir = \"data\"\n").unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(config.data_dir, Some(dir.path().join("data")));
        let err = ConfigFile::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"));
    }
}
