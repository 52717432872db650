//! Reports: a human listing, JSON lines (one finding per line, the contract other tools read)
//! and SARIF 2.1.0 for code-scanning services. Each writer takes findings that are already
//! sorted and merged, and writes to any `io::Write`.

pub mod sarif;

use std::io::{self, Write};

use crate::finding::{Finding, SourceKind};

/// Output format of `stormwall scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text for a terminal.
    Human,
    /// One JSON object per finding per line.
    Jsonl,
    /// A SARIF 2.1.0 log.
    Sarif,
}

/// Writes one JSON object per finding, newline-terminated.
pub fn write_jsonl(out: &mut dyn Write, findings: &[Finding]) -> io::Result<()> {
    for f in findings {
        serde_json::to_writer(&mut *out, f)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes the human report: one block per finding, then a count.
pub fn write_human(out: &mut dyn Write, findings: &[Finding]) -> io::Result<()> {
    for f in findings {
        let l = &f.location;
        let check = if f.validated { ", checksum valid" } else { "" };
        writeln!(
            out,
            "{}:{}:{}: {} ({}{}) {}",
            l.path, l.line, l.column, f.rule_name, f.rule, check, f.redacted
        )?;
        if let Some(g) = &l.git {
            writeln!(
                out,
                "    introduced in commit {} by {} <{}>",
                short(&g.commit),
                g.author,
                g.email
            )?;
        } else if l.source == SourceKind::Git
            && let Some(b) = &l.blob
        {
            writeln!(out, "    in git blob {} (no commit reaches it)", short(b))?;
        }
        if let Some(id) = &f.key_id {
            writeln!(
                out,
                "    Stormwall key id {id}: revoke with `stormwall keys revoke {id}`"
            )?;
        }
    }
    let n = findings.len();
    writeln!(out, "{n} finding{}", if n == 1 { "" } else { "s" })
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}
