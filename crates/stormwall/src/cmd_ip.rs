//! `stormwall ip lookup ADDR`: what the gateway knows of an address — AS number and
//! organisation, country, hosting/VPN/Tor flags, the range that matched, the prefixes the
//! detectors group it by, and which source answered each — read from the same `[ipdb]`
//! section the gateway loads.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use stormwall_ipintel::{Explanation, IpIntel, IpIntelConfig};

use crate::config::FileConfig;

/// IP intelligence commands.
#[derive(Debug, clap::Subcommand)]
pub enum IpCommand {
    /// Print what the gateway knows of an address.
    Lookup {
        /// IPv4 or IPv6 address.
        addr: String,
        /// Config file whose `[ipdb]` section is read (without one, and without the default
        /// file, only the shipped hosting ASN list and `--ipdb` files are used).
        #[arg(long, short = 'c', env = "STORMWALL_CONFIG")]
        config: Option<PathBuf>,
        /// More database files, consulted after the config's.
        #[arg(long)]
        ipdb: Vec<PathBuf>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The `[ipdb]` section of the given config, of `stormwall.toml` when it exists, else the
/// defaults; `--ipdb` files appended.
fn intel_config(config: Option<&Path>, extra: &[PathBuf]) -> anyhow::Result<IpIntelConfig> {
    let default = Path::new("stormwall.toml");
    let path = config.or_else(|| default.exists().then_some(default));
    let mut cfg = match path {
        Some(p) => FileConfig::load(p)?.ipdb,
        None => IpIntelConfig::default(),
    };
    for p in extra {
        if cfg.path.is_none() {
            cfg.path = Some(p.clone());
        } else {
            cfg.extra_paths.push(p.clone());
        }
    }
    Ok(cfg)
}

/// Runs an ip command.
pub fn run(cmd: IpCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IpCommand::Lookup {
            addr,
            config,
            ipdb,
            json,
        } => {
            let ip: IpAddr = addr
                .trim()
                .parse()
                .with_context(|| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
            let cfg = intel_config(config.as_deref(), &ipdb)?;
            let intel = IpIntel::load(&cfg)?;
            let ex = intel.explain(ip);
            let missing = intel.missing();
            if json {
                let mut v = serde_json::to_value(&ex)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("missing".into(), serde_json::to_value(&missing)?);
                }
                println!("{v}");
            } else {
                print!("{}", text(&ex, &missing));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn from(source: Option<&String>) -> String {
    source.map_or(String::new(), |s| format!("  (from {s})"))
}

/// The text form: one field a line, each with its source.
fn text(ex: &Explanation, missing: &[String]) -> String {
    let i = &ex.info;
    let mut out = format!("{}\n", ex.ip);
    let line = |out: &mut String, name: &str, value: String| {
        out.push_str(&format!("  {name:<10} {value}\n"));
    };
    line(
        &mut out,
        "asn",
        i.asn.map_or("unknown".into(), |a| format!("AS{a}")) + &from(ex.sources.asn.as_ref()),
    );
    line(
        &mut out,
        "as_org",
        i.as_org.as_deref().unwrap_or("unknown").to_owned() + &from(ex.sources.as_org.as_ref()),
    );
    line(
        &mut out,
        "country",
        i.country.map_or("unknown".into(), |c| c.to_string()) + &from(ex.sources.country.as_ref()),
    );
    let flags = if i.flags.is_empty() {
        "none".to_owned()
    } else {
        format!("{}  ({})", i.flags, ex.sources.flags.join("; "))
    };
    line(&mut out, "flags", flags);
    if let Some(m) = &ex.matched {
        line(&mut out, "matched", m.clone());
    }
    line(
        &mut out,
        "prefix",
        format!("{}  (the client network the detectors count)", ex.prefix),
    );
    let why = if i.asn.is_some() {
        "by AS number"
    } else {
        "no AS number: by /16 (IPv6 /32) prefix"
    };
    line(
        &mut out,
        "network",
        format!("{}  (what the detectors group it by: {why})", ex.network_id),
    );
    for m in missing {
        out.push_str(&format!("  missing: {m}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_sources_and_the_fallback() {
        let intel = IpIntel::builder()
            .tsv(
                "test.tsv",
                "198.51.100.0\t198.51.100.255\t16509\tUS\tEXAMPLE\n",
            )
            .unwrap()
            .builtin_hosting_asns()
            .unwrap()
            .build();
        let t = text(
            &intel.explain("198.51.100.7".parse().unwrap()),
            &intel.missing(),
        );
        assert!(t.contains("AS16509  (from test.tsv)"), "{t}");
        assert!(
            t.contains("hosting  (builtin:hosting-asns: hosting)"),
            "{t}"
        );
        assert!(t.contains("198.51.100.0-198.51.100.255"), "{t}");
        assert!(t.contains("missing: no Tor exit list"), "{t}");
        let t = text(&intel.explain("192.0.2.1".parse().unwrap()), &[]);
        assert!(
            t.contains("192.0.0.0/16  (what the detectors group it by: no AS number"),
            "{t}"
        );
    }
}
