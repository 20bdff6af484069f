//! Record batches (magic v2) as they sit in a produce request and on disk.
//!
//! The log never re-encodes what a producer sent: a batch is validated here,
//! given its base offset (and, for `LogAppendTime` topics, the broker's
//! timestamp) in place, and written as is. Layout of the v2 header, from the
//! Kafka protocol specification:
//!
//! ```text
//! 0  baseOffset i64      | 8  batchLength i32 | 12 partitionLeaderEpoch i32
//! 16 magic i8            | 17 crc u32 (CRC-32C of bytes 21..)
//! 21 attributes i16      | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64   | 35 maxTimestamp i64
//! 43 producerId i64      | 51 producerEpoch i16 | 53 baseSequence i32
//! 57 recordCount i32     | 61 records...
//! ```

use crate::{LogError, Result};

/// Bytes before the `batchLength` field ends: offset (8) + length (4).
pub const LOG_OVERHEAD: usize = 12;
/// Size of a v2 batch header, up to and including `recordCount`.
pub const BATCH_HEADER_LEN: usize = 61;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORD_COUNT_OFFSET: usize = 57;

const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;
const COMPRESSION_MASK: i16 = 0x07;

/// A read-only view of one v2 batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch size in bytes, including the 12 bytes of offset and length.
    pub size: usize,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks only what is needed to
    /// know the batch's extent; [`validate_batch`] checks the rest.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(LogError::CorruptBatch(format!(
                "{} bytes is shorter than a batch header",
                buf.len()
            )));
        }
        let batch_length = be_i32(buf, 8);
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(LogError::UnsupportedMagic(magic));
        }
        if (batch_length as i64) < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(LogError::CorruptBatch(format!(
                "batch length {batch_length} is shorter than a batch header"
            )));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            size: batch_length as usize + LOG_OVERHEAD,
            magic,
            crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_OFFSET),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(buf, PRODUCER_ID_OFFSET),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_OFFSET),
            base_sequence: be_i32(buf, BASE_SEQUENCE_OFFSET),
            record_count: be_i32(buf, RECORD_COUNT_OFFSET),
        })
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// Makes a freshly encoded batch (exactly one) part of a transaction of
/// `producer_id`: sets the transactional bit, the producer id and epoch,
/// and no sequence numbers, and recomputes the CRC.
pub fn mark_transactional(batch: &mut [u8], producer_id: i64, producer_epoch: i16) {
    stamp_producer(batch, producer_id, producer_epoch, -1, true);
}

/// Writes a producer's id, epoch and first sequence number into an encoded
/// batch (and the transactional flag, if `transactional`), then its CRC.
pub fn stamp_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
) {
    if batch.len() < BATCH_HEADER_LEN {
        return;
    }
    if transactional {
        let attributes = be_i16(batch, ATTRIBUTES_OFFSET) | TRANSACTIONAL_BIT;
        batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    }
    batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
        .copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// What a control batch marks: the end of a transaction on this partition.
/// The type sits in the key of the batch's single record (a version i16,
/// then the type i16: 0 abort, 1 commit), as Kafka writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

/// The marker a control batch (exactly one whole batch) carries; None when
/// the batch is not a control batch or its record is not a transaction
/// marker this broker knows.
pub fn control_type(batch: &[u8]) -> Option<ControlType> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.compression() != 0 {
        return None;
    }
    let mut pos = BATCH_HEADER_LEN;
    let _length = read_varint(batch, &mut pos)?;
    pos += 1; // record attributes
    let _timestamp_delta = read_varint(batch, &mut pos)?;
    let _offset_delta = read_varint(batch, &mut pos)?;
    let key_len = read_varint(batch, &mut pos)?;
    if key_len < 4 || batch.len() < pos + 4 {
        return None;
    }
    match be_i16(batch, pos + 2) {
        0 => Some(ControlType::Abort),
        1 => Some(ControlType::Commit),
        _ => None,
    }
}

/// A transaction marker as a control batch of one record (offset 0; the
/// log assigns the real one): key (version 0, type), value (version 0,
/// coordinator epoch).
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: ControlType,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let kind: i16 = match marker {
        ControlType::Abort => 0,
        ControlType::Commit => 1,
    };
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, 4);
    record.extend(0i16.to_be_bytes());
    record.extend(kind.to_be_bytes());
    put_varint(&mut record, 6);
    record.extend(0i16.to_be_bytes());
    record.extend(coordinator_epoch.to_be_bytes());
    put_varint(&mut record, 0); // headers
    let mut body = Vec::with_capacity(record.len() + 2);
    put_varint(&mut body, record.len() as i64);
    body.extend(record);

    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + body.len());
    b.extend(0i64.to_be_bytes());
    b.extend(((BATCH_HEADER_LEN - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    b.extend((-1i32).to_be_bytes()); // partition leader epoch
    b.push(2);
    b.extend(0u32.to_be_bytes()); // crc, below
    b.extend((TRANSACTIONAL_BIT | CONTROL_BIT).to_be_bytes());
    b.extend(0i32.to_be_bytes()); // last offset delta
    b.extend(timestamp.to_be_bytes());
    b.extend(timestamp.to_be_bytes());
    b.extend(producer_id.to_be_bytes());
    b.extend(producer_epoch.to_be_bytes());
    b.extend((-1i32).to_be_bytes()); // base sequence
    b.extend(1i32.to_be_bytes());
    b.extend(body);
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

/// One transaction that was aborted on a partition: the producer and the
/// offsets from its first batch to its ABORT marker. A read_committed
/// reader drops that producer's batches in the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Whether a batch belongs to one of the `aborted` transactions.
pub fn is_aborted(h: &BatchHeader, aborted: &[AbortedTxn]) -> bool {
    h.is_transactional()
        && !h.is_control()
        && aborted.iter().any(|a| {
            a.producer_id == h.producer_id
                && a.first_offset <= h.base_offset
                && h.base_offset <= a.last_offset
        })
}

/// The byte ranges of the batches in `buf` (whole batches, as a log read
/// returns them) that a read_committed reader gets as data: neither
/// control batches nor batches of a transaction in `aborted` (which must
/// cover the range read). A partial batch at the end is left out.
pub fn committed_batches(buf: &[u8], aborted: &[AbortedTxn]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Ok(h) = BatchHeader::parse(&buf[pos..]) {
        if pos + h.size > buf.len() {
            break;
        }
        let dropped = h.is_control() || is_aborted(&h, aborted);
        if !dropped {
            out.push(pos..pos + h.size);
        }
        pos += h.size;
    }
    out
}

/// How many records the whole batches at the start of `buf` hold, read
/// from their headers alone (a fetch's answer, for throughput counters).
/// A partial batch at the end, as a size-limited read may return, is not
/// counted.
pub fn count_records(buf: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut rest = buf;
    while let Ok(h) = BatchHeader::parse(rest) {
        if h.size > rest.len() {
            break;
        }
        total += h.record_count.max(0) as u64;
        rest = &rest[h.size..];
    }
    total
}

/// The last offset of the last whole batch at the start of `buf`.
pub fn last_offset_of(buf: &[u8]) -> Option<i64> {
    let mut rest = buf;
    let mut last = None;
    while let Ok(h) = BatchHeader::parse(rest) {
        if h.size > rest.len() {
            break;
        }
        last = Some(h.last_offset());
        rest = &rest[h.size..];
    }
    last
}

/// Checks one complete batch as a producer sends it (exactly `buf`):
/// header sanity, CRC-32C, and offsets without gaps.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader> {
    validate(buf, true)
}

/// Checks a batch read back from a segment: the log cleaner leaves gaps
/// between a batch's offsets (the records it removed), so its last offset
/// delta may exceed its record count.
pub fn validate_stored_batch(buf: &[u8]) -> Result<BatchHeader> {
    validate(buf, false)
}

fn validate(buf: &[u8], dense: bool) -> Result<BatchHeader> {
    let header = BatchHeader::parse(buf)?;
    if header.size != buf.len() {
        return Err(LogError::CorruptBatch(format!(
            "batch length says {} bytes but {} are present",
            header.size,
            buf.len()
        )));
    }
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..]);
    if computed != header.crc {
        return Err(LogError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.record_count <= 0 {
        return Err(LogError::InvalidRecord(format!(
            "batch holds {} records",
            header.record_count
        )));
    }
    let gaps = if dense {
        header.compression() == 0 && header.last_offset_delta != header.record_count - 1
    } else {
        header.last_offset_delta < header.record_count - 1
    };
    if header.last_offset_delta < 0 || gaps {
        return Err(LogError::InvalidRecord(format!(
            "last offset delta {} does not match {} records",
            header.last_offset_delta, header.record_count
        )));
    }
    if header.compression() > 4 {
        return Err(LogError::InvalidRecord(format!(
            "unknown compression codec {}",
            header.compression()
        )));
    }
    Ok(header)
}

/// Splits a produce request's record set into batches, validating each.
/// Returns the headers in order; the bytes stay where they are.
pub fn split_batches(records: &[u8]) -> Result<Vec<(std::ops::Range<usize>, BatchHeader)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < LOG_OVERHEAD + 5 {
            return Err(LogError::CorruptBatch(format!(
                "{} trailing bytes after the last batch",
                rest.len()
            )));
        }
        // Reject old message formats before reading a v2 header out of them.
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err(LogError::UnsupportedMagic(magic));
        }
        let len = be_i32(rest, 8);
        if len < 0 || (len as usize) + LOG_OVERHEAD > rest.len() {
            return Err(LogError::CorruptBatch(format!(
                "batch length {len} runs past the end of the record set"
            )));
        }
        let size = len as usize + LOG_OVERHEAD;
        let header = validate_batch(&rest[..size])?;
        out.push((pos..pos + size, header));
        pos += size;
    }
    if out.is_empty() {
        return Err(LogError::InvalidRecord("empty record set".into()));
    }
    Ok(out)
}

/// Gives a batch its place in the log: the base offset, and for
/// `LogAppendTime` topics the broker's timestamp (which changes the CRC).
pub fn assign_offset(batch: &mut [u8], base_offset: i64, log_append_time: Option<i64>) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    if let Some(now) = log_append_time {
        let attributes = be_i16(batch, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_BIT;
        batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an uncompressed v2 batch of `n` records with the given value
    /// size, good enough for the store's tests (records are not decoded).
    pub fn make_batch(n: i32, value_len: usize, timestamp: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..n {
            let mut rec = Vec::new();
            rec.push(0u8); // attributes
            put_varint(&mut rec, 0); // timestamp delta
            put_varint(&mut rec, i as i64); // offset delta
            put_varint(&mut rec, -1); // null key
            put_varint(&mut rec, value_len as i64);
            rec.extend(std::iter::repeat_n(b'x', value_len));
            put_varint(&mut rec, 0); // headers
            put_varint(&mut records, rec.len() as i64);
            records.extend(rec);
        }
        let mut b = Vec::new();
        b.extend(0i64.to_be_bytes());
        b.extend(((BATCH_HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.push(2);
        b.extend(0u32.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend((n - 1).to_be_bytes());
        b.extend(timestamp.to_be_bytes());
        b.extend(timestamp.to_be_bytes());
        b.extend((-1i64).to_be_bytes());
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend(n.to_be_bytes());
        b.extend(records);
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `make_batch` from an idempotent producer (id, epoch 0, sequence).
    pub fn make_idempotent_batch(n: i32, producer_id: i64, base_sequence: i32) -> Vec<u8> {
        let mut b = make_batch(n, 10, 1000);
        b[43..51].copy_from_slice(&producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn control_batches_round_trip_their_marker() {
        for marker in [ControlType::Abort, ControlType::Commit] {
            let b = control_batch(77, 3, marker, 0, 1234);
            let h = validate_batch(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (77, 3, -1)
            );
            assert_eq!(control_type(&b), Some(marker));
        }
        assert_eq!(control_type(&make_batch(1, 4, 0)), None);
    }

    #[test]
    fn read_committed_drops_aborted_batches_and_markers_only() {
        let mut aborted_data = make_idempotent_batch(2, 9, 0);
        aborted_data[21..23].copy_from_slice(&TRANSACTIONAL_BIT.to_be_bytes());
        aborted_data[0..8].copy_from_slice(&5i64.to_be_bytes());
        let plain = make_batch(1, 4, 0);
        let marker = control_batch(9, 0, ControlType::Abort, 0, 0);
        let mut buf = plain.clone();
        buf.extend(&aborted_data);
        buf.extend(&marker);
        buf.extend(&plain);
        let aborted = [AbortedTxn {
            producer_id: 9,
            first_offset: 5,
            last_offset: 7,
        }];
        let kept = committed_batches(&buf, &aborted);
        let second = plain.len() + aborted_data.len() + marker.len();
        assert_eq!(kept, vec![0..plain.len(), second..second + plain.len()]);
        // Without the abort, the transaction's data is kept (committed).
        assert_eq!(committed_batches(&buf, &[]).len(), 3);
    }

    #[test]
    fn count_records_reads_whole_batches_and_ignores_a_partial_tail() {
        let mut buf = make_batch(3, 10, 1);
        buf.extend(make_batch(5, 10, 2));
        assert_eq!(count_records(&buf), 8);
        let partial = make_batch(7, 10, 3);
        buf.extend_from_slice(&partial[..partial.len() - 1]);
        assert_eq!(count_records(&buf), 8, "a cut-off batch is not counted");
        assert_eq!(count_records(&[]), 0);
    }

    #[test]
    fn a_good_batch_validates_and_a_flipped_bit_does_not() {
        let mut b = make_batch(3, 10, 1000);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(
            validate_batch(&b),
            Err(LogError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn assigning_log_append_time_keeps_the_crc_valid() {
        let mut b = make_batch(2, 5, 1000);
        assign_offset(&mut b, 42, Some(99_999));
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.max_timestamp, 99_999);
        assert!(h.is_log_append_time());
    }

    #[test]
    fn split_rejects_truncated_and_old_formats() {
        let b = make_batch(2, 5, 1000);
        assert!(split_batches(&b[..b.len() - 1]).is_err());
        let mut old = b.clone();
        old[16] = 1;
        assert!(matches!(
            split_batches(&old),
            Err(LogError::UnsupportedMagic(1))
        ));
        let mut two = b.clone();
        two.extend_from_slice(&b);
        assert_eq!(split_batches(&two).unwrap().len(), 2);
    }
}
