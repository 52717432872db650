//! Small shared pieces of the parsers: time stamps, addresses (masked or with a port), event
//! ids derived from record text, and fields that are sometimes an object and sometimes a
//! JSON string holding one.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use stormwall_types::{Endpoint, UsageEvent};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ParseError;

/// Parses an RFC 3339 time, also accepting a missing offset (taken as UTC) and a space
/// instead of `T`, as some exports write.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, ParseError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let mut fixed = s.replace(' ', "T");
    let has_offset = fixed.ends_with('Z')
        || fixed.ends_with('z')
        || fixed
            .get(fixed.len().saturating_sub(6)..)
            .is_some_and(|tail| tail.starts_with(['+', '-']) && tail.contains(':'));
    if !has_offset {
        fixed.push('Z');
    }
    OffsetDateTime::parse(&fixed, &Rfc3339).map_err(|_| ParseError::Field("time", short(s)))
}

/// A unix time in seconds.
pub fn unix_time(secs: i64) -> Result<OffsetDateTime, ParseError> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| ParseError::Field("time", secs.to_string()))
}

/// The first 60 characters of a value, for error messages.
pub fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// A caller address as logged: `203.0.113.9`, `203.0.113.9:443`, `[2001:db8::1]:443`, or
/// masked `81.2.69.***` (then the /24 network and `true`). `None` when absent or not an
/// address (a service name such as `bedrock.amazonaws.com`).
pub fn parse_ip(s: &str) -> Option<(IpAddr, bool)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, false));
    }
    // The usual mask, `a.b.c.***` (every Azure diagnostic record): read on the stack. The
    // general rewrite below gives the same address for it.
    if let Some(net) = s.strip_suffix(".***")
        && !net.contains(['*', 'x'])
    {
        let mut buf = [0u8; 48];
        if let Some(dst) = buf.get_mut(..net.len() + 2) {
            let (head, tail) = dst.split_at_mut(net.len());
            head.copy_from_slice(net.as_bytes());
            tail.copy_from_slice(b".0");
            return std::str::from_utf8(dst)
                .ok()
                .and_then(|t| t.parse::<IpAddr>().ok())
                .map(|ip| (mask24(ip), true));
        }
    }
    if s.contains('*') || s.ends_with(".xxx") {
        let cleaned: String = s.replace("***", "0").replace("xxx", "0").replace('*', "0");
        if let Ok(ip) = cleaned.parse::<IpAddr>() {
            return Some((mask24(ip), true));
        }
        return None;
    }
    if let Some(rest) = s.strip_prefix('[')
        && let Some((ip, _)) = rest.split_once(']')
    {
        return ip.parse().ok().map(|ip| (ip, false));
    }
    if let Some((ip, port)) = s.rsplit_once(':')
        && port.bytes().all(|b| b.is_ascii_digit())
        && let Ok(ip) = ip.parse::<Ipv4Addr>()
    {
        return Some((IpAddr::V4(ip), false));
    }
    None
}

fn mask24(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        v6 => v6,
    }
}

/// An event id derived from the record's text (for sources without ids of their own):
/// the same record always gets the same id, so a replay gives the same alert ids.
pub fn derived_id(prefix: &str, text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    let mut s = String::with_capacity(prefix.len() + 33);
    s.push_str(prefix);
    s.push('-');
    for b in d.iter().take(16) {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A 128-bit hex hash of a text (system-prompt hashes), never the text itself.
pub fn hash128(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    let mut s = String::with_capacity(32);
    for b in d.iter().take(16) {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// A JSON string field, borrowed from the record's text when it holds no escape (most do)
/// and owned otherwise. Serde's derive borrows a bare `Cow<'a, str>` field but not one
/// inside an `Option`, which copied every string of every record; this type borrows
/// wherever it sits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A field that is a JSON object, or a JSON string holding one (Azure diagnostic
/// `properties` come both ways). Absent, `null`, or an unreadable string give `None`.
pub fn object_or_string<T: DeserializeOwned>(raw: Option<&RawValue>) -> Option<T> {
    let raw = raw?;
    let text = raw.get().trim_start();
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).ok()?;
        serde_json::from_str(&inner).ok()
    } else if text.starts_with('{') {
        serde_json::from_str(text).ok()
    } else {
        None
    }
}

/// Like [`object_or_string`], borrowing from the record: an object is read in place; a
/// JSON string holding one is unescaped into `holder` and read from there.
pub fn object_or_string_in<'a, T: serde::Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    holder: &'a mut String,
) -> Option<T> {
    let text = raw?.get().trim_start();
    if text.starts_with('"') {
        *holder = serde_json::from_str(text).ok()?;
        let inner: &'a String = holder;
        serde_json::from_str(inner).ok()
    } else if text.starts_with('{') {
        serde_json::from_str(text).ok()
    } else {
        None
    }
}

/// A field that is a JSON object or a JSON string holding one, read in the record's one
/// pass: an object straight into `T` (capturing it as a `RawValue` first scanned it twice),
/// a string kept for [`in_place`] to read. A parser using it must fall back to its
/// `RawValue` reading when the record fails, so an object that is not a `T` still gives
/// the default, as [`object_or_string_in`] does.
pub enum InPlace<'a, T> {
    /// The field was an object, read as `T`.
    Object(T),
    /// The field was a string (unescaped), possibly holding JSON.
    Text(Cow<'a, str>),
    /// Anything else (number, boolean, array): read as absent.
    Other,
}

impl<'de: 'a, 'a, T: serde::Deserialize<'de>> serde::Deserialize<'de> for InPlace<'a, T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a, T>(std::marker::PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<'a, T> {
            type Value = InPlace<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object or a string")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(InPlace::Object)
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(InPlace::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(InPlace::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(InPlace::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(InPlace::Other)
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(InPlace::Other)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(InPlace::Other)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(InPlace::Other)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(InPlace::Other)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(InPlace::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The value of an [`InPlace`] field, as [`object_or_string_in`] reads the same field
/// captured raw: a string holding JSON is parsed from `holder`; absent or unreadable gives
/// `None`.
pub fn in_place<'h, T: serde::Deserialize<'h>>(
    v: Option<InPlace<'h, T>>,
    holder: &'h mut String,
) -> Option<T> {
    match v? {
        InPlace::Object(t) => Some(t),
        InPlace::Text(s) => {
            *holder = s.into_owned();
            let inner: &'h String = holder;
            serde_json::from_str(inner).ok()
        }
        InPlace::Other => None,
    }
}

/// The Azure subscription id in a resource id (`/SUBSCRIPTIONS/<id>/…`), lower-cased.
pub fn azure_subscription(resource_id: &str) -> Option<String> {
    // Segment by segment, without lower-casing the whole id first (every Azure record).
    let mut parts = resource_id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("subscriptions") {
            return parts.next().map(str::to_ascii_lowercase);
        }
    }
    None
}

/// The segment after `/<kind>/` in an Azure resource id (e.g. `accounts` → the account
/// name, `resourcegroups` → the group), as written.
pub fn azure_segment(resource_id: &str, kind: &str) -> Option<String> {
    let mut parts = resource_id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case(kind) {
            return parts.next().map(str::to_owned);
        }
    }
    None
}

/// A fresh usage event for a cloud record (no gateway fields; `source.ip` unspecified until
/// set).
pub fn usage(id: String, t: OffsetDateTime, dataset: &str, method: &str, path: &str) -> UsageEvent {
    UsageEvent::new_in(
        dataset,
        id,
        t,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        method,
        path,
    )
}

/// The endpoint a model name suggests for a generic invocation.
pub fn endpoint_for_model(model: &str) -> Endpoint {
    // Every CloudTrail invocation comes here: the model id is lower-cased on the stack
    // (ASCII only, as the needles are) and searched with finders built once.
    static IMAGE: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::LazyLock::new(|| {
            // `titan-image` and `imagen` are image models too; "image" finds both.
            ["image", "stable-diffusion", "sd3", "nova-canvas", "dall-e"]
                .iter()
                .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
                .collect()
        });
    static EMBED: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"embed"));
    let mut stack = [0u8; 256];
    let heap;
    let m: &[u8] = match stack.get_mut(..model.len()) {
        Some(buf) => {
            buf.copy_from_slice(model.as_bytes());
            buf.make_ascii_lowercase();
            buf
        }
        None => {
            heap = model.to_ascii_lowercase();
            heap.as_bytes()
        }
    };
    if EMBED.find(m).is_some() {
        Endpoint::Embeddings
    } else if IMAGE.iter().any(|f| f.find(m).is_some()) {
        Endpoint::ImagesGenerations
    } else {
        Endpoint::ChatCompletions
    }
}

/// Typical prompt size assumed for a source that logs calls but not their bodies, so the
/// probe and micro-request detectors (which judge prompt size) stay silent unless the source
/// itself shows a probe (a malformed-input error).
pub const UNSEEN_PROMPT_CHARS: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_ip("81.2.69.***"),
            Some(("81.2.69.0".parse().unwrap(), true))
        );
        assert_eq!(
            parse_ip("203.0.113.9:443"),
            Some(("203.0.113.9".parse().unwrap(), false))
        );
        assert_eq!(
            parse_ip("[2001:db8::1]:443"),
            Some(("2001:db8::1".parse().unwrap(), false))
        );
        assert_eq!(parse_ip("bedrock.amazonaws.com"), None);
        assert_eq!(parse_ip(""), None);
    }

    #[test]
    fn masked_addresses_read_on_the_stack_match_the_general_rewrite() {
        // The rewrite every masked address took before the stack path.
        let general = |s: &str| {
            let cleaned = s.replace("***", "0").replace("xxx", "0").replace('*', "0");
            cleaned.parse::<IpAddr>().ok().map(|ip| (mask24(ip), true))
        };
        for s in [
            "81.2.69.***",
            "198.51.100.***",
            " 10.0.0.*** ",
            "300.1.1.***",
            "1.2.***",
            ".***",
            "***",
            "1.2.3.4.***",
            "a.b.c.***",
            "1.2.3.xxx",
            "1.2.3.x***",
            "1.2*.3.***",
            "2001:db8::***",
            "123456789012345678901234567890123456789012345678.***",
        ] {
            let want = if s.trim().parse::<IpAddr>().is_ok() {
                continue;
            } else if s.contains('*') || s.trim().ends_with(".xxx") {
                general(s.trim())
            } else {
                None
            };
            assert_eq!(parse_ip(s), want, "{s:?}");
        }
    }

    #[test]
    fn endpoint_for_model_matches_a_lower_cased_scan() {
        // The classification before the prebuilt finders.
        let scan = |model: &str| {
            let m = model.to_ascii_lowercase();
            if m.contains("embed") {
                Endpoint::Embeddings
            } else if [
                "image",
                "stable-diffusion",
                "sd3",
                "titan-image",
                "nova-canvas",
                "imagen",
                "dall-e",
            ]
            .iter()
            .any(|n| m.contains(n))
            {
                Endpoint::ImagesGenerations
            } else {
                Endpoint::ChatCompletions
            }
        };
        let long = format!("{}Titan-IMAGE", "x".repeat(300));
        for m in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "amazon.titan-embed-text-v2:0",
            "Cohere.EMBED-english-v3",
            "amazon.titan-image-generator-v2:0",
            "stability.stable-diffusion-xl-v1",
            "stability.SD3-large-v1:0",
            "amazon.nova-canvas-v1:0",
            "imagen-3.0-generate-002",
            "DALL-E-3",
            "gpt-4o",
            "",
            "ÉMBED-ünïcode-imagé",
            long.as_str(),
        ] {
            assert_eq!(endpoint_for_model(m), scan(m), "{m:?}");
        }
    }

    #[test]
    fn times() {
        assert!(parse_time("2025-03-04T02:14:09.5120000Z").is_ok());
        assert!(parse_time("2025-03-04T02:14:09").is_ok());
        assert!(parse_time("2025-03-04 02:14:09+01:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn object_or_string_reads_both() {
        #[derive(serde::Deserialize)]
        struct P {
            a: u8,
        }
        let obj = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        let s = RawValue::from_string(r#""{\"a\":2}""#.into()).unwrap();
        assert_eq!(object_or_string::<P>(Some(&obj)).unwrap().a, 1);
        assert_eq!(object_or_string::<P>(Some(&s)).unwrap().a, 2);
        let bad = RawValue::from_string("3".into()).unwrap();
        assert!(object_or_string::<P>(Some(&bad)).is_none());
    }
}
