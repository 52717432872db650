//! The journal's on-disk format, pure: no I/O, so every torn or damaged case is tested on
//! byte slices.
//!
//! A segment is [`MAGIC`] followed by records. A record is a 12-byte header — the payload
//! length (`u32` LE), its bitwise complement (a flipped bit in the length is caught before
//! the length is trusted), the CRC-32 of the payload — and the payload. A payload is the
//! append time (Unix milliseconds, `u64` LE) and the event's JSON.
//!
//! Reading stops at the first record that is not whole and sound, and says why:
//! - [`Stop::Torn`]: the end of the segment was being written when the process or the
//!   machine stopped — a header or payload cut short, zeros past the last record (a file
//!   extended but its data never written), or a last record whose checksum fails and which
//!   runs exactly to the end of the file. Only the segment that was open may end so; the
//!   caller truncates it there.
//! - [`Stop::Corrupt`]: anything else — a damaged length, or a bad checksum with more
//!   bytes after the record. The records after it are never skipped silently: the caller
//!   reports the damage and keeps the bytes for inspection.

/// First bytes of every segment file (format version 1).
pub const MAGIC: &[u8; 8] = b"SWJRNL1\n";
/// Bytes of a record header.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted (an event is a few KiB; anything larger is damage).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Bytes of the append time at the start of each payload.
const TIME_LEN: usize = 8;

/// Why an event could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("journal record of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
}

/// Appends one record holding `append_ms` and the bytes `body` writes, framed. On error,
/// `out` is left as it was.
pub fn frame_with(
    out: &mut Vec<u8>,
    append_ms: u64,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&append_ms.to_le_bytes());
    body(out);
    let len = out.len() - start - HEADER_LEN;
    let Some(len32) = u32::try_from(len).ok().filter(|_| len <= MAX_PAYLOAD) else {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    };
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(!len32).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Appends one record holding `append_ms` and `body`.
pub fn frame(out: &mut Vec<u8>, append_ms: u64, body: &[u8]) -> Result<(), FrameError> {
    frame_with(out, append_ms, |o| o.extend_from_slice(body))
}

/// One sound record found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset of its header in the scanned bytes.
    pub at: usize,
    /// Offset just past it.
    pub end: usize,
    /// When it was appended (Unix milliseconds).
    pub append_ms: u64,
    /// The event's JSON.
    pub body: &'a [u8],
}

/// Where and why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// At the end of the bytes, after a whole record (or at the start).
    End,
    /// A torn tail starts at this offset (see the module docs).
    Torn {
        /// Offset of the torn record.
        at: usize,
    },
    /// A damaged record starts at this offset.
    Corrupt {
        /// Offset of the damaged record.
        at: usize,
        /// What is wrong with it (fixed text).
        why: &'static str,
    },
}

impl Stop {
    /// Offset the sound prefix ends at, given the scanned length.
    pub fn valid_len(&self, len: usize) -> usize {
        match *self {
            Stop::End => len,
            Stop::Torn { at } | Stop::Corrupt { at, .. } => at,
        }
    }
}

/// The record at `at` in `bytes`, or why there is none.
pub fn read_at(bytes: &[u8], at: usize) -> Result<Record<'_>, Stop> {
    let rest = bytes.get(at..).unwrap_or_default();
    if rest.is_empty() {
        return Err(Stop::End);
    }
    if rest.iter().all(|&b| b == 0) {
        return Err(Stop::Torn { at });
    }
    if rest.len() < HEADER_LEN {
        return Err(Stop::Torn { at });
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (len, check, crc) = (word(0), word(4), word(8));
    if len != !check {
        return Err(Stop::Corrupt {
            at,
            why: "record length damaged",
        });
    }
    let len = len as usize;
    if !(TIME_LEN..=MAX_PAYLOAD).contains(&len) {
        return Err(Stop::Corrupt {
            at,
            why: "record length out of range",
        });
    }
    let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(Stop::Torn { at });
    };
    if crc32fast::hash(payload) != crc {
        return Err(if HEADER_LEN + len == rest.len() {
            Stop::Torn { at }
        } else {
            Stop::Corrupt {
                at,
                why: "record checksum mismatch",
            }
        });
    }
    let mut time = [0u8; TIME_LEN];
    time.copy_from_slice(&payload[..TIME_LEN]);
    Ok(Record {
        at,
        end: at + HEADER_LEN + len,
        append_ms: u64::from_le_bytes(time),
        body: &payload[TIME_LEN..],
    })
}

/// Every sound record of `bytes` from `from`, and where and why reading stopped.
pub fn scan(bytes: &[u8], from: usize) -> (Vec<Record<'_>>, Stop) {
    let mut records = Vec::new();
    let mut at = from;
    loop {
        match read_at(bytes, at) {
            Ok(r) => {
                at = r.end;
                records.push(r);
            }
            Err(stop) => return (records, stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(bodies: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            frame(&mut out, i as u64, b).unwrap();
            ends.push(out.len());
        }
        (out, ends)
    }

    #[test]
    fn round_trips() {
        let bodies = vec![b"{\"a\":1}".to_vec(), Vec::new(), vec![7; 1000]];
        let (bytes, _) = segment(&bodies);
        let (records, stop) = scan(&bytes, 0);
        assert_eq!(stop, Stop::End);
        let got: Vec<_> = records.iter().map(|r| r.body.to_vec()).collect();
        assert_eq!(got, bodies);
        assert_eq!(records[2].append_ms, 2);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let (mut bytes, ends) = segment(&[b"x".to_vec()]);
        bytes.extend_from_slice(&[0; 40]);
        let (records, stop) = scan(&bytes, 0);
        assert_eq!(records.len(), 1);
        assert_eq!(stop, Stop::Torn { at: ends[0] });
    }

    #[test]
    fn a_damaged_length_mid_segment_is_corruption() {
        let (mut bytes, ends) = segment(&[b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        bytes[ends[0]] ^= 0x40; // the second record's length
        let (records, stop) = scan(&bytes, 0);
        assert_eq!(records.len(), 1);
        assert!(matches!(stop, Stop::Corrupt { at, .. } if at == ends[0]));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut out = vec![1, 2];
        let e = frame_with(&mut out, 0, |o| {
            o.extend(std::iter::repeat_n(0, MAX_PAYLOAD))
        });
        assert!(matches!(e, Err(FrameError::TooLarge(_))));
        assert_eq!(out, vec![1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A crash mid-append leaves any prefix of the bytes: every whole record before the
        /// cut is read back, and what follows is a torn tail, never corruption.
        #[test]
        fn every_cut_is_a_torn_tail(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut_frac in 0.0f64..1.0,
        ) {
            let (bytes, ends) = segment(&bodies);
            let cut = ((bytes.len() as f64) * cut_frac) as usize;
            let (records, stop) = scan(&bytes[..cut], 0);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(records.len(), whole);
            for (r, b) in records.iter().zip(&bodies) {
                prop_assert_eq!(r.body, &b[..]);
            }
            let valid = if whole == 0 { 0 } else { ends[whole - 1] };
            if valid == cut {
                prop_assert_eq!(stop, Stop::End);
            } else {
                prop_assert_eq!(stop, Stop::Torn { at: valid });
            }
        }

        /// A flipped bit anywhere is never read as data: the records before the damaged
        /// one are read back unchanged, and reading stops at the damaged one — as
        /// corruption, unless it is the last record (then it may be a torn tail).
        #[test]
        fn a_bit_flip_is_always_caught(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            pos_frac in 0.0f64..1.0,
            bit in 0u8..8,
        ) {
            let (mut bytes, ends) = segment(&bodies);
            let pos = (((bytes.len() - 1) as f64) * pos_frac) as usize;
            bytes[pos] ^= 1 << bit;
            let hit = ends.iter().position(|&e| e > pos).unwrap();
            let (records, stop) = scan(&bytes, 0);
            prop_assert_eq!(records.len(), hit);
            for (r, b) in records.iter().zip(&bodies) {
                prop_assert_eq!(r.body, &b[..]);
            }
            let at = if hit == 0 { 0 } else { ends[hit - 1] };
            match stop {
                Stop::Corrupt { at: a, .. } => prop_assert_eq!(a, at),
                Stop::Torn { at: a } => {
                    prop_assert_eq!(a, at);
                    prop_assert_eq!(hit, bodies.len() - 1, "only the last record may read as torn");
                }
                Stop::End => prop_assert!(false, "a flipped bit read as sound"),
            }
        }
    }
}
