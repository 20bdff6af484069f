//! One decode per record, however many pipelines read a source. Decoding
//! (JSON parsing, mostly) is the costly part of reading a source, so the
//! readers of every pipeline over the same source share what they decode:
//! the first reader at a position of a partition decodes the chunk there,
//! and readers of other pipelines arriving at the same position take it,
//! so a second view over a source costs its operators, not a second decode.
//!
//! Each pipeline still reads on its own: its own cursors (its checkpoint
//! says where it is), its own pace and its own replay frontier. Sharing
//! happens where pipelines meet: at the head of a source, where every
//! caught-up pipeline reads what was just appended, and during a backlog
//! read by pipelines that started together (chunks are cut the same way
//! from the same position). A pipeline elsewhere (replaying from an old
//! checkpoint) decodes for itself until it catches up.
//!
//! Invariant: a shared chunk is exactly the records of `from..next_offset`
//! of one partition of one topic (by id, so a topic deleted and created
//! again never sees its predecessor's chunks), decoded with one decoder
//! (by the source's reading: topic, schema, format, tombstones). Taking it
//! is therefore the same as decoding that range again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use uuid::Uuid;

use crate::error::Result;
use crate::format::Decoded;
use crate::reader::SourceReading;

/// How much decoded data a source keeps for readers that come later.
const BUDGET_BYTES: usize = 64 << 20;

/// The sources being read, each with the chunks its readers share.
#[derive(Default)]
pub struct SharedDecodes {
    sources: Mutex<HashMap<String, Weak<DecodedChunks>>>,
}

impl SharedDecodes {
    pub fn new() -> Arc<SharedDecodes> {
        Arc::new(SharedDecodes::default())
    }

    /// The shared chunks of the source read as `reading`; they live as long
    /// as some pipeline reads it.
    pub fn chunks_of(&self, reading: &SourceReading) -> Arc<DecodedChunks> {
        let identity = reading.identity();
        let mut sources = self.sources.lock();
        sources.retain(|_, chunks| chunks.strong_count() > 0);
        if let Some(chunks) = sources.get(&identity).and_then(Weak::upgrade) {
            return chunks;
        }
        let chunks = Arc::new(DecodedChunks::default());
        sources.insert(identity, Arc::downgrade(&chunks));
        chunks
    }
}

type ChunkKey = (Uuid, usize, i64);

/// Decoded records of `from..next_offset` of a partition.
#[derive(Clone)]
pub struct DecodedRange {
    pub decoded: Decoded,
    pub next_offset: i64,
    /// Whether another reader decoded it.
    pub shared: bool,
}

enum Slot {
    /// A reader is decoding it; others wait for it.
    Decoding,
    Ready(DecodedRange),
}

#[derive(Default)]
struct Slots {
    slots: HashMap<ChunkKey, Slot>,
    /// Ready chunks, oldest first, with their sizes: what goes first.
    order: VecDeque<(ChunkKey, usize)>,
    bytes: usize,
}

/// The chunks of one source that its readers share.
#[derive(Default)]
pub struct DecodedChunks {
    slots: Mutex<Slots>,
    ready: Condvar,
    decodes: AtomicU64,
    shared: AtomicU64,
}

impl DecodedChunks {
    /// The records of partition `partition` of topic `topic` from offset
    /// `from`, decoded by `decode` unless another reader has decoded (or is
    /// decoding) them. A reader held at `hold` takes only a chunk that ends
    /// there or before.
    pub fn get_or_decode(
        &self,
        topic: Uuid,
        partition: usize,
        from: i64,
        hold: Option<i64>,
        decode: impl FnOnce() -> Result<DecodedRange>,
    ) -> Result<DecodedRange> {
        let key = (topic, partition, from);
        let mut slots = self.slots.lock();
        loop {
            match slots.slots.get(&key) {
                None => {
                    slots.slots.insert(key, Slot::Decoding);
                    break;
                }
                Some(Slot::Decoding) => {
                    // The timeout only bounds a wait on a reader that died.
                    self.ready.wait_for(&mut slots, Duration::from_millis(100));
                }
                Some(Slot::Ready(range)) => {
                    if hold.is_some_and(|h| range.next_offset > h) {
                        drop(slots);
                        self.decodes.fetch_add(1, Ordering::Relaxed);
                        return decode();
                    }
                    self.shared.fetch_add(1, Ordering::Relaxed);
                    return Ok(DecodedRange {
                        shared: true,
                        ..range.clone()
                    });
                }
            }
        }
        drop(slots);
        // Whatever happens in `decode` (an error, a panic), the claim goes.
        let claim = Claim {
            chunks: self,
            key,
            done: false,
        };
        self.decodes.fetch_add(1, Ordering::Relaxed);
        let range = decode()?;
        claim.fill(range.clone());
        Ok(range)
    }

    /// How many chunks were decoded, and how many were taken from another
    /// reader's decode.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.decodes.load(Ordering::Relaxed),
            self.shared.load(Ordering::Relaxed),
        )
    }
}

struct Claim<'a> {
    chunks: &'a DecodedChunks,
    key: ChunkKey,
    done: bool,
}

impl Claim<'_> {
    fn fill(mut self, range: DecodedRange) {
        let size = range.decoded.batch.get_array_memory_size();
        let mut slots = self.chunks.slots.lock();
        slots.slots.insert(self.key, Slot::Ready(range));
        slots.order.push_back((self.key, size));
        slots.bytes += size;
        while slots.bytes > BUDGET_BYTES {
            let Some((old, size)) = slots.order.pop_front() else {
                break;
            };
            slots.slots.remove(&old);
            slots.bytes -= size;
        }
        self.done = true;
        drop(slots);
        self.chunks.ready.notify_all();
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.chunks.slots.lock().slots.remove(&self.key);
            self.chunks.ready.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::error::SqlError;

    fn range(from: i64, to: i64) -> DecodedRange {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let values = Int64Array::from_iter_values(from..to);
        DecodedRange {
            decoded: Decoded {
                batch: RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap(),
                bad: 0,
                first_error: None,
                marks: Vec::new(),
            },
            next_offset: to,
            shared: false,
        }
    }

    #[test]
    fn readers_at_the_same_position_decode_once() {
        let chunks = Arc::new(DecodedChunks::default());
        let topic = Uuid::new_v4();
        let decoded = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (chunks, decoded) = (chunks.clone(), decoded.clone());
                std::thread::spawn(move || {
                    let mut from = 0;
                    while from < 100 {
                        let got = chunks
                            .get_or_decode(topic, 0, from, None, || {
                                decoded.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(2));
                                Ok(range(from, from + 10))
                            })
                            .unwrap();
                        assert_eq!(got.decoded.batch.num_rows(), 10);
                        from = got.next_offset;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(decoded.load(Ordering::SeqCst), 10);
        assert_eq!(chunks.counts(), (10, 30));
    }

    #[test]
    fn a_held_reader_decodes_for_itself_and_a_failed_decode_is_not_kept() {
        let chunks = DecodedChunks::default();
        let topic = Uuid::new_v4();
        chunks
            .get_or_decode(topic, 0, 0, None, || Ok(range(0, 10)))
            .unwrap();
        // Held at 5: the shared chunk reaches past it.
        let held = chunks
            .get_or_decode(topic, 0, 0, Some(5), || Ok(range(0, 5)))
            .unwrap();
        assert_eq!(held.next_offset, 5);
        // Another topic (or the same name created again) shares nothing.
        let other = chunks
            .get_or_decode(Uuid::new_v4(), 0, 0, None, || Ok(range(0, 3)))
            .unwrap();
        assert_eq!(other.next_offset, 3);

        let failed = chunks.get_or_decode(topic, 1, 0, None, || {
            Err(SqlError::Execution("corrupt".into()))
        });
        assert!(failed.is_err());
        let retried = chunks
            .get_or_decode(topic, 1, 0, None, || Ok(range(0, 7)))
            .unwrap();
        assert_eq!(retried.next_offset, 7);
    }
}
