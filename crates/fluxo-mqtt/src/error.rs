//! The crate's one error type. Every variant ends at most one connection:
//! the listener itself only fails to start.

use fluxo_log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not an MQTT packet (the codec's words).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet that the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A CONNECT for a protocol level other than 4 (3.1.1) and 5.
    #[error("MQTT protocol level {0} is not supported; use 3.1.1 (4) or 5")]
    UnsupportedProtocol(u8),
    #[error("packet of more than {max} bytes")]
    PacketTooLarge { max: usize },
    /// The MQTT topic cannot be a record of a fluxo topic; MQTT 5 clients
    /// get reason code 0x90, MQTT 3.1.1 clients are disconnected.
    #[error("topic '{topic}' is refused: {reason}")]
    TopicRefused { topic: String, reason: String },
    #[error("log error: {0}")]
    Log(#[from] LogError),
}

impl From<rumqttc::mqttbytes::Error> for MqttError {
    fn from(e: rumqttc::mqttbytes::Error) -> Self {
        match e {
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_) => {
                MqttError::Malformed("the packet is larger than the maximum packet size".into())
            }
            rumqttc::mqttbytes::Error::Io(e) => MqttError::Io(e),
            other => MqttError::Malformed(other.to_string()),
        }
    }
}

impl From<rumqttc::v5::mqttbytes::Error> for MqttError {
    fn from(e: rumqttc::v5::mqttbytes::Error) -> Self {
        match e {
            rumqttc::v5::mqttbytes::Error::Io(e) => MqttError::Io(e),
            other => MqttError::Malformed(other.to_string()),
        }
    }
}
