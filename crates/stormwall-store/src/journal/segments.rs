//! Segment files in the journal directory: names, the directory lock, and recovery of what
//! a previous run left (torn tails truncated, damaged records reported and their bytes kept).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::JournalError;
use super::format::{self, MAGIC, Stop};

/// Extension of segment files.
const EXT: &str = "swj";

/// The path of segment `seq` in `dir`.
pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}"))
}

/// Takes the directory's lock file, so two processes never share one journal.
pub fn lock(dir: &Path) -> Result<File, JournalError> {
    std::fs::create_dir_all(dir).map_err(|e| JournalError::io("create directory", dir, e))?;
    let lock_path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| JournalError::io("open lock file", &lock_path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(JournalError::io("lock", &lock_path, e)),
    }
}

/// Sequence numbers of the segments in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut seqs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| JournalError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_suffix(".swj")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// What recovery found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Segment number.
    pub seq: u64,
    /// Length of its sound prefix (the file's length after recovery).
    pub len: u64,
    /// Sound records in it.
    pub records: u64,
    /// Append time of its first record.
    pub first_ms: Option<u64>,
    /// Bytes of a torn tail cut off.
    pub torn_bytes: u64,
    /// Where a damaged record was found, and the file its bytes were moved to.
    pub corrupt: Option<(u64, &'static str, PathBuf)>,
}

/// Checks segment `seq`, the newest one (`last`) or not, and leaves only its sound prefix
/// in place: a torn tail of the newest is cut off; a damaged record (or a torn end of an
/// older segment, which was synced at close and cannot be torn by a crash) is corruption,
/// and everything from it on is moved to `<segment>.bad-<offset>` for inspection.
pub fn recover(dir: &Path, seq: u64, last: bool) -> Result<Recovered, JournalError> {
    let p = path(dir, seq);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .map_err(|e| JournalError::io("open segment", &p, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| JournalError::io("read segment", &p, e))?;
    let (records, first_ms, stop) = if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(&bytes) {
            // Created but its header not (wholly) written.
            (0, None, Stop::Torn { at: 0 })
        } else {
            (
                0,
                None,
                Stop::Corrupt {
                    at: 0,
                    why: "not a journal segment",
                },
            )
        }
    } else if &bytes[..MAGIC.len()] != MAGIC {
        (
            0,
            None,
            Stop::Corrupt {
                at: 0,
                why: "not a journal segment",
            },
        )
    } else {
        let (records, stop) = format::scan(&bytes, MAGIC.len());
        (
            records.len() as u64,
            records.first().map(|r| r.append_ms),
            stop,
        )
    };
    let stop = match stop {
        Stop::Torn { at } if !last => Stop::Corrupt {
            at,
            why: "segment ends mid-record although it was closed",
        },
        s => s,
    };
    let valid = stop.valid_len(bytes.len());
    let mut out = Recovered {
        seq,
        len: valid as u64,
        records,
        first_ms,
        torn_bytes: 0,
        corrupt: None,
    };
    match stop {
        Stop::End => {}
        Stop::Torn { at } => out.torn_bytes = (bytes.len() - at) as u64,
        Stop::Corrupt { at, why } => {
            let bad = dir.join(format!("{seq:020}.{EXT}.bad-{at}"));
            std::fs::write(&bad, &bytes[at..])
                .map_err(|e| JournalError::io("keep damaged bytes", &bad, e))?;
            out.corrupt = Some((at as u64, why, bad));
        }
    }
    if valid < bytes.len() {
        if valid < MAGIC.len() {
            // Nothing sound: start the segment over, so its header is whole.
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(MAGIC))
                .map_err(|e| JournalError::io("rewrite segment header", &p, e))?;
            out.len = MAGIC.len() as u64;
        } else {
            file.set_len(valid as u64)
                .map_err(|e| JournalError::io("truncate segment", &p, e))?;
        }
        file.sync_all()
            .map_err(|e| JournalError::io("sync segment", &p, e))?;
    }
    Ok(out)
}

/// Creates segment `seq` with its header, synced along with the directory entry.
pub fn create(dir: &Path, seq: u64) -> Result<File, JournalError> {
    let p = path(dir, seq);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&p)
        .map_err(|e| JournalError::io("create segment", &p, e))?;
    file.write_all(MAGIC)
        .map_err(|e| JournalError::io("write segment header", &p, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Syncs the directory, so a new or removed segment's name survives a machine crash.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("sync directory", dir, e))
}

/// Reads `len` bytes at `offset` of segment `seq`.
pub fn read_range(dir: &Path, seq: u64, offset: u64, len: usize) -> Result<Vec<u8>, JournalError> {
    let p = path(dir, seq);
    let mut file = File::open(&p).map_err(|e| JournalError::io("open segment", &p, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| JournalError::io("seek segment", &p, e))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)
        .map_err(|e| JournalError::io("read segment", &p, e))?;
    Ok(buf)
}

/// Deletes segment `seq` (shipped and acknowledged).
pub fn remove(dir: &Path, seq: u64) -> Result<(), JournalError> {
    let p = path(dir, seq);
    std::fs::remove_file(&p).map_err(|e| JournalError::io("delete segment", &p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_segment(dir: &Path, seq: u64, bodies: &[&[u8]], tail: &[u8]) -> Vec<u64> {
        let mut bytes = MAGIC.to_vec();
        let mut ends = Vec::new();
        for b in bodies {
            format::frame(&mut bytes, 1, b).unwrap();
            ends.push(bytes.len() as u64);
        }
        bytes.extend_from_slice(tail);
        std::fs::write(path(dir, seq), bytes).unwrap();
        ends
    }

    #[test]
    fn a_torn_tail_of_the_newest_segment_is_cut_off_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segment(dir.path(), 3, &[b"a", b"b"], &[9, 0, 0, 0, 1]);
        let r = recover(dir.path(), 3, true).unwrap();
        assert_eq!((r.records, r.len, r.torn_bytes), (2, ends[1], 5));
        assert!(r.corrupt.is_none());
        assert_eq!(
            std::fs::metadata(path(dir.path(), 3)).unwrap().len(),
            ends[1]
        );
        // Recovering again finds nothing more: recovery is idempotent.
        let again = recover(dir.path(), 3, true).unwrap();
        assert_eq!(
            (again.records, again.len, again.torn_bytes),
            (2, ends[1], 0)
        );
    }

    #[test]
    fn a_torn_end_of_an_older_segment_is_corruption_kept_for_inspection() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segment(dir.path(), 1, &[b"a"], &[1, 2, 3]);
        let r = recover(dir.path(), 1, false).unwrap();
        let (at, _, bad) = r.corrupt.unwrap();
        assert_eq!(at, ends[0]);
        assert_eq!(std::fs::read(bad).unwrap(), vec![1, 2, 3]);
        assert_eq!(r.records, 1);
    }

    #[test]
    fn damage_mid_segment_stops_reading_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segment(dir.path(), 1, &[b"one", b"two", b"three"], &[]);
        let p = path(dir.path(), 1);
        let mut bytes = std::fs::read(&p).unwrap();
        let flip = ends[0] as usize + format::HEADER_LEN + 9;
        bytes[flip] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let r = recover(dir.path(), 1, true).unwrap();
        assert_eq!(r.records, 1);
        let (at, why, bad) = r.corrupt.unwrap();
        assert_eq!((at, why), (ends[0], "record checksum mismatch"));
        assert_eq!(std::fs::read(bad).unwrap(), bytes[ends[0] as usize..]);
    }

    #[test]
    fn a_half_written_header_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path(), 5), &MAGIC[..3]).unwrap();
        let r = recover(dir.path(), 5, true).unwrap();
        assert_eq!((r.records, r.len, r.torn_bytes), (0, MAGIC.len() as u64, 3));
        assert_eq!(std::fs::read(path(dir.path(), 5)).unwrap(), MAGIC.to_vec());
    }

    #[test]
    fn the_directory_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path()).unwrap();
        assert!(matches!(lock(dir.path()), Err(JournalError::Locked(_))));
    }
}
