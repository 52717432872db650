//! The investigation scenario: an LLMjacking network among legitimate tenants, labelled
//! with every entity's role. Two tool creators, three relay providers each fronting
//! several stolen keys of different victims (whose owners keep using them), a dozen user
//! clusters with distinct personas buying access, over a week, among the simulator's
//! legitimate population — plus integrators that legitimately use several clients' keys
//! from one network (a provider look-alike that must get no role).
//!
//! It only generates labelled events; the investigation crate is scored on them.

use std::collections::{BTreeMap, BTreeSet};

use stormwall_types::safety::{Action, Category};
use stormwall_types::{Endpoint, SafetyStage, SafetyVerdict, UsageEvent, VerdictCategory};

use crate::actors::{HOUR_MS, Req};
use crate::world::{self, Net, Program, Rng};
use crate::{SimConfig, SimError, Simulation, hex128};
use stormwall_detect::EgressFlag;
use stormwall_detect::sketch::mix64;

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Seed.
    pub seed: u64,
    /// Legitimate keys of the population.
    pub legit_keys: usize,
    /// Days of event time.
    pub days: u32,
    /// Scale of legitimate request rates.
    pub rate_scale: f64,
    /// Relay providers.
    pub providers: usize,
    /// Stolen keys each provider fronts.
    pub keys_per_provider: usize,
    /// User clusters, spread over the providers.
    pub user_clusters: usize,
    /// Adds the harder cases: a relay fronting a single victim's key, buyers that switch
    /// relays, a creator's tool whose fingerprint changes with a new version, and an
    /// honest integrator serving shared template prompts to its clients' end users.
    pub harder: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            seed: 1,
            legit_keys: 200,
            days: 7,
            rate_scale: 0.15,
            providers: 3,
            keys_per_provider: 3,
            user_clusters: 12,
            harder: false,
        }
    }
}

/// A client program as its fingerprint sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolSignature {
    /// One user agent it sends (versions vary).
    pub user_agent: String,
    /// Header names in order.
    pub header_names: Vec<String>,
    /// Sends empty `Origin` and `Referer`.
    pub empty_origin: bool,
    /// Sends forwarding headers.
    pub forwarded: bool,
}

/// The scenario's ground truth.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkTruth {
    /// Relay networks (/24 CIDR), one per provider.
    pub providers: Vec<String>,
    /// The creators' tools.
    pub creators: Vec<ToolSignature>,
    /// User clusters: the system-prompt digest each persona sends (hex).
    pub users: Vec<String>,
    /// Tenants whose keys a provider fronted.
    pub victims: Vec<String>,
    /// Every other tenant.
    pub legit_tenants: Vec<String>,
    /// Integrators' networks (/24): legitimate multi-tenant use.
    pub integrators: Vec<String>,
    /// Of `providers`, the relays that front a single victim's key (harder scenario).
    #[serde(default)]
    pub single_key_providers: Vec<String>,
    /// TLS fingerprints of the creators' tools that no legitimate client in the scenario
    /// sends (a tool on a common stack, such as Node's, has none of its own).
    #[serde(default)]
    pub creator_tls: Vec<String>,
}

/// Events (time order) and truth.
#[derive(Debug, Clone)]
pub struct NetworkScenario {
    /// Every event, oldest first.
    pub events: Vec<UsageEvent>,
    /// What each entity is.
    pub truth: NetworkTruth,
}

fn headers(list: &[&str]) -> std::sync::Arc<Vec<String>> {
    std::sync::Arc::new(list.iter().map(|s| (*s).to_owned()).collect())
}

/// The tools creators write: the first two for a seed are that run's creators.
fn tools(rng: &mut Rng) -> Vec<Program> {
    let v = rng.range(0, 9);
    let mut all = vec![
        Program {
            ua: format!("relaykit/2.{v}.1").into(),
            headers: headers(&[
                "host",
                "content-type",
                "authorization",
                "user-agent",
                "origin",
                "referer",
                "x-relay-session",
                "content-length",
            ]),
            empty_origin: true,
            forwarded: false,
        },
        Program {
            ua: format!("Mozilla/5.0 (X11; Linux x86_64) GenStudio/1.{v}").into(),
            headers: headers(&[
                "host",
                "user-agent",
                "accept",
                "authorization",
                "content-type",
                "x-forwarded-for",
                "x-studio-build",
                "content-length",
            ]),
            empty_origin: false,
            forwarded: true,
        },
        Program {
            ua: format!("node-fetch/3.{v} oai-reverse/0.{v}").into(),
            headers: headers(&[
                "accept",
                "authorization",
                "content-type",
                "user-agent",
                "accept-encoding",
                "connection",
                "host",
                "content-length",
            ]),
            empty_origin: false,
            forwarded: false,
        },
        Program {
            ua: format!("Go-http-client/1.1 sillyproxy/{v}").into(),
            headers: headers(&[
                "host",
                "user-agent",
                "content-length",
                "authorization",
                "content-type",
                "x-proxy-key",
                "accept-encoding",
            ]),
            empty_origin: true,
            forwarded: true,
        },
    ];
    // A seed-chosen pair.
    let first = rng.range(0, all.len() as u64) as usize;
    let a = all.remove(first);
    let second = rng.range(0, all.len() as u64) as usize;
    let b = all.remove(second);
    vec![a, b]
}

fn verdict(category: Category, action: Action, score: f32) -> SafetyVerdict {
    SafetyVerdict {
        category: VerdictCategory::Content(category),
        action,
        score,
        stage: SafetyStage::Input,
        ..Default::default()
    }
}

/// A buyer persona.
struct Persona {
    provider: usize,
    sys: u64,
    end_users: Vec<u64>,
    images: f64,
    rate_per_hour: f64,
    tz: i64,
    abuse: f64,
    model: &'static str,
    start: i64,
    /// Moves to another relay at this time (harder scenario).
    switch: Option<(i64, usize)>,
    /// Sends no end-user id (harder scenario).
    no_end_user: bool,
}

/// Generates the scenario.
pub fn network_scenario(cfg: &NetworkConfig) -> Result<NetworkScenario, SimError> {
    if cfg.providers == 0 || cfg.providers > 20 || cfg.keys_per_provider < 2 {
        return Err(SimError::Invalid(
            "providers must be 1..=20, keys_per_provider at least 2",
        ));
    }
    let sim = Simulation::new(SimConfig {
        seed: cfg.seed,
        legit_keys: cfg.legit_keys,
        days: cfg.days,
        warmup_days: 0,
        attacks_per_scenario: 0,
        rate_scale: cfg.rate_scale,
        ..SimConfig::default()
    })?;
    let mut rng = Rng::new(mix64(cfg.seed ^ 0x4e45_5457_4f52_4b21));
    let start = sim.start_ms();
    let mut history = sim.history(cfg.days);
    let end = history.end_ms();
    let mut events = Vec::new();
    let mut seq = 0u64;
    let mut per_key: BTreeMap<usize, u64> = BTreeMap::new();
    let mut legit_tls: BTreeSet<String> = BTreeSet::new();
    while let Some((t, r)) = history.next() {
        if let Some(e) = history.event(&r, t, seq) {
            *per_key.entry(r.key).or_default() += 1;
            legit_tls.extend(e.tls_fingerprint.clone());
            events.push(e);
            seq += 1;
        }
    }
    let keys = sim.keys();
    // Keys busy enough that their owners' own use shows, one per tenant.
    let mut candidates: Vec<usize> = Vec::new();
    let mut tenants_taken = BTreeSet::new();
    for (&k, &n) in &per_key {
        let info = &keys[k];
        if n >= 30 && !info.canary && tenants_taken.insert(info.tenant.clone()) {
            candidates.push(k);
        }
    }
    let stolen_n = cfg.providers * cfg.keys_per_provider;
    let integrator_clients = 3 * 2;
    // The harder cases take one more victim key and three template-integrator clients.
    let extra = if cfg.harder { 4 } else { 0 };
    if candidates.len() < stolen_n + integrator_clients + 3 + extra {
        return Err(SimError::Invalid(
            "too few busy legitimate keys for the network: raise legit_keys or rate_scale",
        ));
    }
    // Shuffle deterministically.
    for i in (1..candidates.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        candidates.swap(i, j);
    }
    let mut stolen: Vec<Vec<usize>> = (0..cfg.providers)
        .map(|p| candidates[p * cfg.keys_per_provider..(p + 1) * cfg.keys_per_provider].to_vec())
        .collect();
    let clients: Vec<Vec<usize>> = (0..2)
        .map(|i| candidates[stolen_n + i * 3..stolen_n + i * 3 + 3].to_vec())
        .collect();

    let nets = world::networks();
    let hosting: Vec<Net> = nets
        .iter()
        .filter(|n| matches!(n.flag, Some(EgressFlag::Hosting | EgressFlag::Vpn)))
        .cloned()
        .collect();
    let tools = tools(&mut rng);
    // Provider p runs: the first tool, both, the second (then round-robin).
    let mut provider_tools: Vec<Vec<usize>> = (0..cfg.providers)
        .map(|p| match p % 3 {
            0 => vec![0],
            1 => vec![0, 1],
            _ => vec![1],
        })
        .collect();
    let mut relay: Vec<(Net, u8)> = Vec::new();
    let mut truth = NetworkTruth::default();
    for _ in 0..cfg.providers {
        let net = hosting[rng.range(0, hosting.len() as u64) as usize].clone();
        let c = rng.range(160, 250) as u8;
        let ip = net.ip(u16::from(c) << 8);
        truth.providers.push(cidr24(ip));
        relay.push((net, c));
    }
    // The harder cases draw from their own generator, so the base scenario of a seed is
    // the same with or without them.
    let mut hrng = Rng::new(mix64(cfg.seed ^ 0x4841_5244_4552_2121));
    // The first tool's next version adds a header: a new fingerprint of the same family.
    // Relays running it upgrade at different times; the single-key relay starts on it.
    let upgraded = {
        let mut p = tools[0].clone();
        let mut h = (*p.headers).clone();
        let at = h.len().saturating_sub(1);
        h.insert(at, "x-client-version".to_owned());
        p.headers = std::sync::Arc::new(h);
        p
    };
    let mut upgrade_at: Vec<i64> = vec![i64::MAX; cfg.providers];
    if cfg.harder {
        for u in upgrade_at.iter_mut() {
            *u = start + (hrng.uniform(2.0, 5.0) * 24.0) as i64 * HOUR_MS;
        }
        // A relay fronting one victim's key, on the new version of the first tool.
        let net = hosting[hrng.range(0, hosting.len() as u64) as usize].clone();
        let mut c = hrng.range(160, 250) as u8;
        while truth.providers.contains(&cidr24(net.ip(u16::from(c) << 8))) {
            c = c.wrapping_add(1).max(160);
        }
        let cidr = cidr24(net.ip(u16::from(c) << 8));
        truth.providers.push(cidr.clone());
        truth.single_key_providers.push(cidr);
        relay.push((net, c));
        stolen.push(vec![candidates[stolen_n + integrator_clients + 3]]);
        provider_tools.push(vec![0]);
        upgrade_at.push(start);
    }
    for (i, tool) in tools.iter().enumerate() {
        if provider_tools.iter().any(|t| t.contains(&i)) {
            truth.creators.push(ToolSignature {
                user_agent: tool.ua.to_string(),
                header_names: (*tool.headers).clone(),
                empty_origin: tool.empty_origin,
                forwarded: tool.forwarded,
            });
        }
    }
    let mut personas: Vec<Persona> = (0..cfg.user_clusters)
        .map(|u| Persona {
            provider: u % cfg.providers,
            sys: rng.next_u64(),
            end_users: (0..rng.range(2, 15))
                .map(|_| rng.next_u64() >> 20)
                .collect(),
            images: if rng.chance(0.4) {
                rng.uniform(0.3, 0.9)
            } else {
                0.0
            },
            rate_per_hour: rng.uniform(1.0, 6.0),
            tz: rng.range(0, 24) as i64,
            abuse: rng.uniform(0.05, 0.4),
            model: if rng.chance(0.5) {
                "gpt-4o"
            } else {
                "gpt-4o-mini"
            },
            start: start + rng.range(0, 2 * 24) as i64 * HOUR_MS,
            switch: None,
            no_end_user: false,
        })
        .collect();
    if cfg.harder {
        truth.creators.push(ToolSignature {
            user_agent: upgraded.ua.to_string(),
            header_names: (*upgraded.headers).clone(),
            empty_origin: upgraded.empty_origin,
            forwarded: upgraded.forwarded,
        });
        let relays = relay.len();
        for (u, p) in personas.iter_mut().enumerate() {
            // Every fourth buyer moves to another relay mid-week (the single-key one
            // included); every fifth sends no end-user id.
            if u % 4 == 3 {
                let at = start + (hrng.uniform(2.0, 5.0) * 24.0) as i64 * HOUR_MS;
                p.switch = Some((at, (p.provider + 1) % relays));
            }
            p.no_end_user = u % 5 == 4;
        }
        // The single-key relay's own buyers.
        for _ in 0..2 {
            personas.push(Persona {
                provider: relays - 1,
                sys: hrng.next_u64(),
                end_users: (0..hrng.range(2, 15))
                    .map(|_| hrng.next_u64() >> 20)
                    .collect(),
                images: 0.0,
                rate_per_hour: hrng.uniform(1.0, 4.0),
                tz: hrng.range(0, 24) as i64,
                abuse: hrng.uniform(0.05, 0.3),
                model: "gpt-4o-mini",
                start: start + hrng.range(0, 2 * 24) as i64 * HOUR_MS,
                switch: None,
                no_end_user: false,
            });
        }
    }
    for p in &personas {
        truth.users.push(hex128(p.sys));
    }
    let mut victims = BTreeSet::new();
    for list in &stolen {
        for &k in list {
            victims.insert(keys[k].tenant.to_string());
        }
    }
    let template_req = |key: usize, net: &Net, host: u16, program: &Program| Req {
        key,
        net: net.clone(),
        host,
        program: program.clone(),
        endpoint: Endpoint::ChatCompletions,
        model: "gpt-4o-mini",
        max_tokens: None,
        prompt_chars: 0,
        sys: None,
        root: None,
        end_user: None,
        in_tok: 0,
        out_tok: 0,
        inflight: 1,
        verdicts: Vec::new(),
        api_version: None,
    };
    // The stock OpenAI Python SDK: integrators use it, and one provider now and then.
    let agency = Program {
        ua: "OpenAI/Python 1.51.0".into(),
        headers: headers(&[
            "host",
            "accept-encoding",
            "connection",
            "accept",
            "content-type",
            "user-agent",
            "x-stainless-lang",
            "x-stainless-package-version",
            "x-stainless-os",
            "x-stainless-arch",
            "x-stainless-runtime",
            "x-stainless-runtime-version",
            "authorization",
            "x-stainless-async",
            "x-stainless-retry-count",
            "x-stainless-read-timeout",
            "content-length",
        ]),
        empty_origin: false,
        forwarded: false,
    };
    let stock = agency.clone();
    legit_tls.extend(world::tls_of(&agency).map(str::to_owned));
    for (i, tool) in tools.iter().enumerate() {
        if let Some(fp) = world::tls_of(tool).filter(|fp| !legit_tls.contains(*fp))
            && provider_tools.iter().any(|t| t.contains(&i))
            && !truth.creator_tls.iter().any(|c| c == fp)
        {
            truth.creator_tls.push(fp.to_owned());
        }
    }
    // Buyers, through their provider's relay.
    for p in &personas {
        let mut t = p.start;
        while t < end {
            let gap = rng.exp(HOUR_MS as f64 / p.rate_per_hour) as i64;
            t += gap.max(1000);
            if t >= end {
                break;
            }
            // Buyers sleep: little traffic in their night.
            let local = ((t / HOUR_MS) + p.tz).rem_euclid(24);
            if local < 7 && !rng.chance(0.15) {
                continue;
            }
            let provider = match p.switch {
                Some((at, to)) if t >= at => to,
                _ => p.provider,
            };
            let (net, c) = &relay[provider];
            let keys_here = &stolen[provider];
            let key = keys_here[rng.range(0, keys_here.len() as u64) as usize];
            let tl = &provider_tools[provider];
            // The first provider also sends a fifth of its traffic through the stock SDK
            // many legitimate tenants use: no creator's signature.
            let tool = if provider == 0 && rng.chance(0.2) {
                &stock
            } else {
                match tl[rng.range(0, tl.len() as u64) as usize] {
                    0 if t >= upgrade_at[provider] => &upgraded,
                    i => &tools[i],
                }
            };
            let host = (u16::from(*c) << 8) | rng.range(2, 30) as u16;
            let mut r = template_req(key, net, host, tool);
            // Some requests come without the persona's system prompt.
            r.sys = (!rng.chance(0.2)).then_some(p.sys);
            r.root = Some(rng.next_u64());
            r.end_user = rng.pick(&p.end_users).copied().filter(|_| !p.no_end_user);
            r.prompt_chars = rng.range(200, 3000);
            if rng.chance(p.images) {
                r.endpoint = Endpoint::ImagesGenerations;
                r.model = "dall-e-3";
                r.in_tok = r.prompt_chars / 4;
                r.out_tok = 0;
            } else {
                r.model = p.model;
                r.in_tok = r.prompt_chars / 4 + 200;
                r.out_tok = rng.range(100, 900);
            }
            if rng.chance(p.abuse) {
                let cat = if rng.chance(0.5) {
                    Category::RealPersonSexual
                } else {
                    Category::Sexual
                };
                let block = rng.chance(0.5);
                r.verdicts.push(verdict(
                    cat,
                    if block { Action::Block } else { Action::Flag },
                    rng.uniform(0.6, 0.99) as f32,
                ));
                if rng.chance(0.3) {
                    r.verdicts
                        .push(verdict(Category::Jailbreak, Action::Flag, 0.7));
                }
            }
            if let Some(e) = history.event(&r, t, seq) {
                events.push(e);
                seq += 1;
            }
        }
    }
    // Integrators: one network, several clients' keys, each client's own prompt.
    for list in &clients {
        let net = hosting[rng.range(0, hosting.len() as u64) as usize].clone();
        let c = rng.range(100, 150) as u8;
        truth.integrators.push(cidr24(net.ip(u16::from(c) << 8)));
        for &key in list {
            let sys = rng.next_u64();
            let mut t = start + rng.range(0, 24) as i64 * HOUR_MS;
            while t < end {
                t += (rng.exp(HOUR_MS as f64 / 2.0) as i64).max(1000);
                if t >= end {
                    break;
                }
                let mut r = template_req(key, &net, (u16::from(c) << 8) | 7, &agency);
                r.sys = Some(sys);
                r.root = Some(rng.next_u64());
                r.prompt_chars = rng.range(300, 1500);
                r.in_tok = r.prompt_chars / 4;
                r.out_tok = rng.range(50, 400);
                if let Some(e) = history.event(&r, t, seq) {
                    events.push(e);
                    seq += 1;
                }
            }
        }
    }
    // An open-source chat app's default system prompt, used by three legitimate tenants
    // from their own networks: a style seen across tenants that no relay serves.
    let template = rng.next_u64();
    for &key in candidates[stolen_n + integrator_clients..].iter().take(3) {
        let net = nets[rng.range(0, nets.len() as u64) as usize].clone();
        let host = rng.range(256, 60_000) as u16;
        let mut t = start + rng.range(0, 24) as i64 * HOUR_MS;
        while t < end {
            t += (rng.exp(HOUR_MS as f64 / 1.5) as i64).max(1000);
            if t >= end {
                break;
            }
            let mut r = template_req(key, &net, host, &agency);
            r.sys = Some(template);
            r.root = Some(rng.next_u64());
            r.prompt_chars = rng.range(100, 800);
            r.in_tok = r.prompt_chars / 4;
            r.out_tok = rng.range(50, 300);
            if let Some(e) = history.event(&r, t, seq) {
                events.push(e);
                seq += 1;
            }
        }
    }
    if cfg.harder {
        // An honest integrator: one network, three clients' keys, the same three template
        // prompts for all of them, and each client's own end users (an end user stays
        // with one client). Today's provider look-alike, which must get no role.
        let net = hosting[hrng.range(0, hosting.len() as u64) as usize].clone();
        let c = hrng.range(60, 100) as u8;
        truth.integrators.push(cidr24(net.ip(u16::from(c) << 8)));
        let templates: Vec<u64> = (0..3).map(|_| hrng.next_u64()).collect();
        let first = stolen_n + integrator_clients + 4;
        for &key in &candidates[first..first + 3] {
            let users: Vec<u64> = (0..hrng.range(15, 40))
                .map(|_| hrng.next_u64() >> 20)
                .collect();
            let mut t = start + hrng.range(0, 24) as i64 * HOUR_MS;
            while t < end {
                t += (hrng.exp(HOUR_MS as f64 / 3.0) as i64).max(1000);
                if t >= end {
                    break;
                }
                let host = (u16::from(c) << 8) | hrng.range(2, 6) as u16;
                let mut r = template_req(key, &net, host, &agency);
                r.sys = hrng.pick(&templates).copied();
                r.root = Some(hrng.next_u64());
                r.end_user = hrng.pick(&users).copied();
                r.prompt_chars = hrng.range(200, 1500);
                r.in_tok = r.prompt_chars / 4;
                r.out_tok = hrng.range(50, 500);
                if let Some(e) = history.event(&r, t, seq) {
                    events.push(e);
                    seq += 1;
                }
            }
        }
    }
    events.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
    truth.victims = victims.iter().cloned().collect();
    let all: BTreeSet<String> = keys.iter().map(|k| k.tenant.to_string()).collect();
    truth.legit_tenants = all.difference(&victims).cloned().collect();
    Ok(NetworkScenario { events, truth })
}

/// The /24 of an address (the simulator's addresses are IPv4).
fn cidr24(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(v6) => format!("{v6}/128"),
    }
}
