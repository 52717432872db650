//! The containers logs come in: JSON lines, one JSON array, one object wrapping an array
//! (`Records` for CloudTrail, `records` for Azure storage exports, `data` for OpenAI list
//! answers), or a single (possibly pretty-printed) record — each optionally gzip-compressed.
//! Every record is handed on with the line it starts on.

use std::borrow::Cow;
use std::io::Read;

use serde_json::value::RawValue;

/// Largest decompressed size accepted from one gzip file (a bomb is an error, not an
/// allocation).
pub const MAX_DECOMPRESSED: u64 = 8 * 1024 * 1024 * 1024;

/// The container could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerError {
    /// Line where reading stopped.
    pub line: usize,
    /// Why.
    pub message: String,
}

/// Whether bytes start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip (all members), capped at [`MAX_DECOMPRESSED`].
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, ContainerError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| ContainerError {
            line: 0,
            message: format!("gzip: {e}"),
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(ContainerError {
            line: 0,
            message: format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
        });
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct Wrapper<'a> {
    #[serde(borrow, alias = "records", alias = "data", alias = "value")]
    #[serde(rename = "Records")]
    records: Option<Vec<&'a RawValue>>,
}

/// Calls `f(line, text)` for every record in `bytes`. Errors only when the container itself
/// is unreadable (a broken gzip stream or JSON array); a bad record is for `f` to judge.
pub fn records(bytes: &[u8], f: &mut dyn FnMut(usize, &str)) -> Result<(), ContainerError> {
    if is_gzip(bytes) {
        let plain = gunzip(bytes)?;
        return records(&plain, f);
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text: Cow<'_, str> = match std::str::from_utf8(bytes) {
        Ok(t) => Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let text = text.as_ref();
    let first = text.bytes().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Ok(());
    };
    match text.as_bytes().get(first) {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| ContainerError {
                line: e.line(),
                message: format!("JSON array: {e}"),
            })?;
            each_raw(text, &items, f);
            Ok(())
        }
        Some(b'{') => {
            // One JSON value (a wrapper, or one pretty-printed record) or JSON lines.
            if let Ok(whole) = serde_json::from_str::<&RawValue>(text) {
                if let Ok(Wrapper {
                    records: Some(items),
                }) = serde_json::from_str::<Wrapper<'_>>(whole.get())
                {
                    each_raw(text, &items, f);
                } else {
                    f(line_of(text, whole.get()), whole.get());
                }
                return Ok(());
            }
            lines(text, f);
            Ok(())
        }
        _ => {
            lines(text, f);
            Ok(())
        }
    }
}

fn each_raw(text: &str, items: &[&RawValue], f: &mut dyn FnMut(usize, &str)) {
    // Lines are counted incrementally: items come in file order.
    let base = text.as_ptr() as usize;
    let mut line = 1usize;
    let mut pos = 0usize;
    for item in items {
        let start = (item.get().as_ptr() as usize).saturating_sub(base);
        if start >= pos {
            let seg = text.as_bytes().get(pos..start).unwrap_or(&[]);
            line += memchr::memchr_iter(b'\n', seg).count();
            pos = start;
        }
        f(line, item.get());
    }
}

fn line_of(text: &str, part: &str) -> usize {
    let start = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    1 + memchr::memchr_iter(b'\n', text.as_bytes().get(..start).unwrap_or(&[])).count()
}

fn lines(text: &str, f: &mut dyn FnMut(usize, &str)) {
    // Split at every `\n` with memchr's SIMD search (what `str::split('\n')` does, faster
    // on long records); `\n` is ASCII, so every piece is on a character boundary.
    let mut start = 0usize;
    let mut i = 0usize;
    let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain(std::iter::once(text.len()));
    for end in ends {
        i += 1;
        let line = text.get(start..end).unwrap_or_default();
        start = end + 1;
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        f(i, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(bytes: &[u8]) -> Vec<(usize, String)> {
        let mut v = Vec::new();
        records(bytes, &mut |l, t| v.push((l, t.to_owned()))).unwrap();
        v
    }

    #[test]
    fn json_lines_keep_line_numbers() {
        let v = collect(b"{\"a\":1}\n\n{\"a\":2}\r\n");
        assert_eq!(v, vec![(1, "{\"a\":1}".into()), (3, "{\"a\":2}".into())]);
    }

    #[test]
    fn records_wrapper_array_and_single_pretty_record() {
        let v = collect(b"{\"Records\": [\n {\"a\":1},\n {\"a\":2}\n]}");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, 3);
        let v = collect(b"[{\"a\":1},{\"a\":2}]");
        assert_eq!(v.len(), 2);
        let v = collect(b"{\n  \"a\": 1\n}\n");
        assert_eq!(v.len(), 1);
        let v = collect(b"{\"records\":[{\"a\":1}]}");
        assert_eq!(v, vec![(1, "{\"a\":1}".into())]);
    }

    #[test]
    fn gzip_is_transparent() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"a\":1}\n{\"a\":2}\n").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(collect(&gz).len(), 2);
        let mut broken = gz.clone();
        broken.truncate(gz.len() / 2);
        assert!(records(&broken, &mut |_, _| {}).is_err());
    }

    #[test]
    fn a_broken_array_is_a_container_error() {
        assert!(records(b"[{\"a\":1},", &mut |_, _| {}).is_err());
    }
}
