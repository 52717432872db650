//! Archives (zip, tar, gzip, and tarballs), opened with caps on total decompressed bytes,
//! member count and nesting depth, so a decompression bomb costs a bounded amount of work.
//! Sizes claimed by archive headers are never trusted: every read goes through the budget.

use std::io::{self, Cursor, Read, Seek};

use super::{Origin, Scanner, Sink};
use crate::finding::SourceKind;

/// An archive format recognised by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Zip,
    Tar,
    TarGz,
    Gz,
}

/// The archive format of a path, from its extension.
pub(crate) fn kind_of(name: &str) -> Option<Kind> {
    let lower = name.to_ascii_lowercase();
    let ends = |s: &str| lower.ends_with(s);
    if ends(".zip") || ends(".jar") || ends(".whl") || ends(".nupkg") || ends(".vsix") {
        Some(Kind::Zip)
    } else if ends(".tar.gz") || ends(".tgz") || ends(".crate") {
        Some(Kind::TarGz)
    } else if ends(".tar") {
        Some(Kind::Tar)
    } else if ends(".gz") {
        Some(Kind::Gz)
    } else {
        None
    }
}

/// What one top-level archive may still cost, shared by the archives nested in it.
struct Budget {
    bytes: u64,
    entries: u64,
    exhausted: bool,
}

/// A reader that charges every byte to the budget and ends the stream when it runs out.
struct Charged<'b, R> {
    inner: R,
    budget: &'b mut Budget,
}

impl<R: Read> Read for Charged<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.budget.bytes == 0 {
            self.budget.exhausted = true;
            return Ok(0);
        }
        let cap = buf
            .len()
            .min(usize::try_from(self.budget.bytes).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        self.budget.bytes -= n as u64;
        Ok(n)
    }
}

/// Scans a top-level archive file.
pub(crate) fn scan<R: Read + Seek>(
    scanner: &Scanner,
    kind: Kind,
    reader: R,
    label: &str,
    depth: u32,
    sink: Sink<'_>,
) {
    let mut budget = Budget {
        bytes: scanner.options.max_archive_bytes,
        entries: scanner.options.max_archive_entries,
        exhausted: false,
    };
    let mut ctx = Ctx {
        scanner,
        sink,
        budget: &mut budget,
        buf: Vec::new(),
    };
    if let Err(e) = ctx.open(kind, reader, label, depth) {
        tracing::debug!(path = %label, error = %e, "cannot read archive");
        scanner
            .counters
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if budget.exhausted {
        tracing::warn!(path = %label, "archive scan stopped at its size or entry cap");
    }
}

struct Ctx<'a, 'b> {
    scanner: &'a Scanner,
    sink: Sink<'a>,
    budget: &'b mut Budget,
    buf: Vec<u8>,
}

impl Ctx<'_, '_> {
    fn open<R: Read + Seek>(
        &mut self,
        kind: Kind,
        reader: R,
        label: &str,
        depth: u32,
    ) -> io::Result<()> {
        match kind {
            Kind::Zip => self.zip(reader, label, depth),
            Kind::Tar => self.tar(reader, label, depth),
            Kind::TarGz => self.tar(flate2::read::GzDecoder::new(reader), label, depth),
            Kind::Gz => {
                let inner = label.strip_suffix(".gz").unwrap_or(label);
                let name = format!("{label}!{}", base_name(inner));
                self.member(flate2::read::GzDecoder::new(reader), &name, depth)
            }
        }
    }

    fn zip<R: Read + Seek>(&mut self, reader: R, label: &str, depth: u32) -> io::Result<()> {
        let mut archive = zip::ZipArchive::new(reader).map_err(io::Error::other)?;
        for i in 0..archive.len() {
            if !self.take_entry() {
                break;
            }
            let entry = match archive.by_index(i) {
                Ok(e) => e,
                // Encrypted or unsupported members are skipped, not fatal.
                Err(e) => {
                    tracing::debug!(path = %label, error = %e, "skipping zip member");
                    continue;
                }
            };
            if entry.is_dir() || entry.size() > self.scanner.options.max_file_size {
                continue;
            }
            let member = entry
                .name()
                .map_or_else(|_| format!("member-{i}"), |n| n.into_owned());
            let name = format!("{label}!{member}");
            self.member(entry, &name, depth)?;
        }
        Ok(())
    }

    fn tar<R: Read>(&mut self, reader: R, label: &str, depth: u32) -> io::Result<()> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            if !self.take_entry() {
                break;
            }
            let entry = entry?;
            if !entry.header().entry_type().is_file()
                || entry.size() > self.scanner.options.max_file_size
            {
                continue;
            }
            let name = format!("{label}!{}", entry.path()?.to_string_lossy());
            self.member(entry, &name, depth)?;
        }
        Ok(())
    }

    fn take_entry(&mut self) -> bool {
        if self.budget.entries == 0 || self.budget.exhausted {
            self.budget.exhausted = true;
            return false;
        }
        self.budget.entries -= 1;
        true
    }

    /// One member: a nested archive (read into memory, within the caps) or a stream.
    fn member<R: Read>(&mut self, reader: R, name: &str, depth: u32) -> io::Result<()> {
        let max = self.scanner.options.max_file_size;
        let nested = kind_of(name).filter(|_| depth < self.scanner.options.max_archive_depth);
        let mut charged = Charged {
            inner: reader.take(max),
            budget: &mut *self.budget,
        };
        if let Some(kind) = nested {
            let mut bytes = Vec::new();
            charged.read_to_end(&mut bytes)?;
            return self.open(kind, Cursor::new(bytes), name, depth + 1);
        }
        let origin = Origin {
            path: name.to_owned(),
            source: SourceKind::Archive,
            blob: None,
            git: None,
        };
        let scanned = self
            .scanner
            .scan_stream(&mut charged, &origin, &mut self.buf, self.sink)?;
        let counter = if scanned {
            &self.scanner.progress.files
        } else {
            &self.scanner.counters.skipped_binary
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension() {
        assert_eq!(kind_of("a/b.ZIP"), Some(Kind::Zip));
        assert_eq!(kind_of("x.tar.gz"), Some(Kind::TarGz));
        assert_eq!(kind_of("x.tgz"), Some(Kind::TarGz));
        assert_eq!(kind_of("x.tar"), Some(Kind::Tar));
        assert_eq!(kind_of("x.json.gz"), Some(Kind::Gz));
        assert_eq!(kind_of("x.rs"), None);
        assert_eq!(base_name("a/b/c.txt"), "c.txt");
    }
}
