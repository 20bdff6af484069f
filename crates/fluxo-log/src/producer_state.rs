//! Per-partition state of idempotent producers: the last few batches of
//! each producer id, so a retried batch is recognised instead of written
//! twice, and a gap in sequence numbers is refused.
//!
//! The state lives in memory; after a restart a producer's next batch is
//! accepted as the start of a new sequence (Kafka rebuilds it from the log
//! snapshot; fluxo does not yet).

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::{LogError, Result};

/// Kafka keeps the last five batches per producer, matching the most
/// in-flight requests an idempotent producer may have.
const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy)]
struct BatchMetadata {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMetadata>,
}

#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

pub(crate) enum SequenceCheck {
    Append,
    Duplicate { base_offset: i64 },
}

fn last_seq(h: &BatchHeader) -> i32 {
    // Sequences wrap around at i32::MAX, as in Kafka.
    ((h.base_sequence as i64 + h.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
}

impl ProducerStates {
    pub(crate) fn check(&self, h: &BatchHeader) -> Result<SequenceCheck> {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch(format!(
                "producer {} epoch {} is older than {}",
                h.producer_id, h.producer_epoch, entry.epoch
            )));
        }
        if h.producer_epoch > entry.epoch {
            if h.base_sequence != 0 {
                return Err(LogError::OutOfOrderSequence(format!(
                    "new epoch {} of producer {} must start at sequence 0, not {}",
                    h.producer_epoch, h.producer_id, h.base_sequence
                )));
            }
            return Ok(SequenceCheck::Append);
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq(h))
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| {
                if b.last_seq == i32::MAX {
                    0
                } else {
                    b.last_seq + 1
                }
            })
            .unwrap_or(h.base_sequence);
        if h.base_sequence != expected {
            return Err(LogError::OutOfOrderSequence(format!(
                "producer {} sent sequence {}, expected {}",
                h.producer_id, h.base_sequence, expected
            )));
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch that was written (with its assigned base offset).
    pub(crate) fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchMetadata {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset: h.base_offset,
        });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
    }
}
