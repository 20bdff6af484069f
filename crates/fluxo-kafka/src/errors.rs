//! Mapping of fluxo's errors to Kafka error codes.

use fluxo_log::LogError;
use kafka_protocol::error::ResponseError;

/// The Kafka error code a client acts on for a log error.
pub fn log_error_code(e: &LogError) -> i16 {
    let code = match e {
        LogError::Io(_) | LogError::SegmentFull | LogError::Offline(_) => {
            ResponseError::KafkaStorageError
        }
        LogError::CorruptBatch(_) | LogError::CrcMismatch { .. } => ResponseError::CorruptMessage,
        LogError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        LogError::InvalidRecord(_) => ResponseError::InvalidRecord,
        LogError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        LogError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        LogError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        LogError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        LogError::InvalidConfig(_) => ResponseError::InvalidConfig,
        LogError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        LogError::Metadata(_) => ResponseError::UnknownServerError,
    };
    code.code()
}

pub const NONE: i16 = 0;

pub fn code(e: ResponseError) -> i16 {
    e.code()
}
