//! Who sends traffic: legitimate keys (one actor per key, shaped by its tenant's profile)
//! and attackers (a script of kill-chain segments over one or more keys).

use std::sync::Arc;

use stormwall_types::safety::{Action, Category};
use stormwall_types::{Endpoint, SafetyStage, SafetyVerdict, VerdictCategory};

use super::world::{Net, Program, Rng};

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// One request an actor wants to send.
#[derive(Debug, Clone)]
pub struct Req {
    /// Key index in the simulation's key table.
    pub key: usize,
    /// Network.
    pub net: Net,
    /// Host part of the address.
    pub host: u16,
    /// Client program.
    pub program: Program,
    /// Operation.
    pub endpoint: Endpoint,
    /// Model.
    pub model: &'static str,
    /// `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Prompt characters.
    pub prompt_chars: u64,
    /// System prompt id.
    pub sys: Option<u64>,
    /// Conversation root seed.
    pub root: Option<u64>,
    /// End user id.
    pub end_user: Option<u64>,
    /// Input tokens.
    pub in_tok: u64,
    /// Output tokens.
    pub out_tok: u64,
    /// In flight.
    pub inflight: u32,
    /// Safety verdicts.
    pub verdicts: Vec<SafetyVerdict>,
    /// Azure api-version.
    pub api_version: Option<&'static str>,
}

fn verdict(category: impl Into<VerdictCategory>, action: Action, score: f32) -> SafetyVerdict {
    SafetyVerdict {
        category: category.into(),
        action,
        score,
        stage: SafetyStage::Input,
        ..Default::default()
    }
}

/// Shape of a legitimate tenant's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A server app in the cloud (hosting egress).
    ServerCloud,
    /// A server app on a corporate network.
    ServerCorp,
    /// A support bot passing end-user ids, often with per-user system prompts.
    SupportBot,
    /// A mobile app calling the API directly from many client addresses.
    Mobile,
    /// CI jobs: bursts from many cloud addresses, smoke tests with max_tokens = 1.
    Ci,
    /// A company whose traffic leaves through a commercial VPN in several countries.
    VpnCompany,
    /// A nightly batch job.
    Batch,
    /// An image studio.
    ImageStudio,
    /// A legitimate role-play app.
    Roleplay,
    /// A medical app that trips the content filter now and then.
    Medical,
}

impl Profile {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::ServerCloud => "server_cloud",
            Profile::ServerCorp => "server_corp",
            Profile::SupportBot => "support_bot",
            Profile::Mobile => "mobile_app",
            Profile::Ci => "ci_jobs",
            Profile::VpnCompany => "vpn_company",
            Profile::Batch => "nightly_batch",
            Profile::ImageStudio => "image_studio",
            Profile::Roleplay => "roleplay_app",
            Profile::Medical => "medical_app",
        }
    }
}

/// A legitimate key's traffic generator.
#[derive(Debug, Clone)]
pub struct Legit {
    /// Key index.
    pub key: usize,
    /// Profile.
    pub profile: Profile,
    /// Hours east of UTC of the tenant's users.
    pub tz: i64,
    /// Requests per hour at the daily peak.
    pub peak: f64,
    /// Networks it uses.
    pub nets: Vec<Net>,
    /// Hosts it uses (empty: any).
    pub hosts: Vec<u16>,
    /// Client programs (usually one).
    pub programs: Vec<Program>,
    /// System prompts.
    pub sys: Vec<u64>,
    /// A new system prompt per request (templated with the user).
    pub dynamic_sys: bool,
    /// End users (0: none passed).
    pub end_users: u64,
    /// Models.
    pub models: Vec<&'static str>,
    /// Share of image generations.
    pub image_share: f64,
    /// Share of embeddings.
    pub embed_share: f64,
    /// Share with role-play markers.
    pub roleplay_share: f64,
    /// Share with content-filter hits.
    pub hit_share: f64,
    /// Share of max_tokens = 1 probes (smoke tests).
    pub probe_share: f64,
    /// Lists models now and then (SDK start-up).
    pub lists_models: bool,
    /// Azure api-version, for Azure clients.
    pub api_version: Option<&'static str>,
    /// When the key starts being used.
    pub start_ms: i64,
    /// Requests left in the current burst (CI, batch).
    pub burst_left: u32,
    /// Host of the current burst.
    pub burst_host: u16,
    /// A developer's session from home: (start, steps done).
    pub dev_session: Option<(i64, u8)>,
    /// The developer's network and program.
    pub dev_client: Option<(Net, Program)>,
    /// Changes in the owner's own setup over the week (time, change), in time order: office
    /// VPN changes, SDK upgrades, a new app onboarded on the key. Legitimate novelty.
    pub changes: Vec<(i64, Change)>,
    /// Runs a nightly batch besides its daytime traffic.
    pub nightly: bool,
}

/// A change a legitimate owner makes to how a key is used.
#[derive(Debug, Clone)]
pub enum Change {
    /// The egress moves (a new office VPN, a new cloud region, runners moved).
    Nets(Vec<Net>),
    /// One more network joins the usual ones.
    AddNet(Net),
    /// The client programs change (an SDK upgrade or a switch of SDK).
    Programs(Vec<Program>),
    /// A new app starts on the key: its program, system prompts and models join.
    NewApp {
        /// The new app's program.
        program: Program,
        /// Its system prompts.
        sys: Vec<u64>,
        /// Its model.
        model: &'static str,
        /// Its share of image generations.
        image_share: f64,
    },
}

fn diurnal(profile: Profile, local_hour: i64, weekday: i64) -> f64 {
    let h = local_hour.rem_euclid(24);
    let weekend = weekday >= 5;
    let business = match h {
        0..=5 => 0.03,
        6 | 7 => 0.2,
        8..=17 => 1.0,
        18..=20 => 0.35,
        _ => 0.1,
    };
    let consumer = match h {
        0..=1 => 0.35,
        2..=6 => 0.08,
        7..=11 => 0.5,
        12..=17 => 0.7,
        18..=22 => 1.0,
        _ => 0.6,
    };
    match profile {
        Profile::Mobile | Profile::Roleplay | Profile::SupportBot => {
            consumer * if weekend { 1.1 } else { 1.0 }
        }
        Profile::Batch => 0.15 * business,
        _ => business * if weekend { 0.25 } else { 1.0 },
    }
}

impl Legit {
    fn rate(&self, t_ms: i64) -> f64 {
        let hours = t_ms.div_euclid(HOUR_MS) + self.tz;
        let weekday = (hours.div_euclid(24) + 3).rem_euclid(7); // epoch day 0 was a Thursday
        self.peak * diurnal(self.profile, hours, weekday)
    }

    fn apply_changes(&mut self, t_ms: i64) {
        while let Some((at, _)) = self.changes.first() {
            if *at > t_ms {
                break;
            }
            let (_, c) = self.changes.remove(0);
            match c {
                Change::Nets(n) => self.nets = n,
                Change::AddNet(n) => self.nets.push(n),
                Change::Programs(p) => self.programs = p,
                Change::NewApp {
                    program,
                    sys,
                    model,
                    image_share,
                } => {
                    self.programs.push(program);
                    self.sys.extend(sys);
                    self.models.push(model);
                    self.image_share = self.image_share.max(image_share);
                }
            }
        }
    }

    /// The next request and the time of the one after.
    pub fn step(&mut self, t_ms: i64, rng: &mut Rng) -> (Option<Req>, i64) {
        self.apply_changes(t_ms);
        if let Some(next) = self.dev_step(t_ms, rng) {
            return next;
        }
        let local_hour = (t_ms.div_euclid(HOUR_MS) + self.tz).rem_euclid(24);
        // Bursts: CI pipelines and the nightly batch.
        if self.burst_left > 0 {
            self.burst_left -= 1;
            let gap = if self.nightly || self.profile == Profile::Batch {
                rng.exp(6_000.0)
            } else {
                rng.exp(5_000.0)
            } as i64;
            return (Some(self.request(rng, true)), t_ms + gap.max(200));
        }
        let req = self.request(rng, false);
        let next = self.next_time(t_ms, rng);
        if self.profile == Profile::Ci && rng.chance(0.12) && (8..19).contains(&local_hour) {
            self.burst_left = rng.range(8, 30) as u32;
            self.burst_host = rng.range(0, 4000) as u16;
        }
        if (self.profile == Profile::Batch || self.nightly)
            && local_hour == 2
            && self.burst_left == 0
            && rng.chance(0.5)
        {
            self.burst_left = rng.range(150, 400) as u32;
        }
        (Some(req), next)
    }

    fn next_time(&self, t_ms: i64, rng: &mut Rng) -> i64 {
        let max = self.peak.max(0.1);
        let mut t = t_ms;
        // Thinning: candidates at the peak rate, kept with probability rate/peak.
        for _ in 0..100_000 {
            t += (rng.exp(3_600_000.0 / max) as i64).max(50);
            if rng.f64() * max <= self.rate(t) {
                return t;
            }
        }
        t
    }

    fn dev_step(&mut self, t_ms: i64, rng: &mut Rng) -> Option<(Option<Req>, i64)> {
        let (start, done) = self.dev_session?;
        if t_ms < start || done >= 5 {
            return None;
        }
        let (net, program) = self.dev_client.clone()?;
        self.dev_session = Some((start, done + 1));
        let mut r = self.request(rng, false);
        r.net = net;
        r.host = rng.range(1, 250) as u16;
        // A hand-written curl session passes no end-user id, whatever the app does.
        if program.ua.starts_with("curl/") {
            r.end_user = None;
        }
        r.program = program;
        r.verdicts.clear();
        match done {
            0 => {
                r.endpoint = Endpoint::Models;
                r.max_tokens = None;
                r.prompt_chars = 0;
                r.sys = None;
                r.root = None;
                r.in_tok = 0;
                r.out_tok = 0;
            }
            1 => {
                r.endpoint = Endpoint::ChatCompletions;
                r.max_tokens = Some(1);
                r.prompt_chars = 2;
                r.sys = None;
                r.in_tok = 8;
                r.out_tok = 1;
            }
            _ => {
                r.endpoint = Endpoint::ChatCompletions;
            }
        }
        let next = if done + 1 >= 5 {
            self.next_time(t_ms, rng)
        } else {
            t_ms + rng.range(20_000, 90_000) as i64
        };
        Some((Some(r), next))
    }

    fn request(&self, rng: &mut Rng, burst: bool) -> Req {
        let net = rng
            .pick(&self.nets)
            .cloned()
            .unwrap_or_else(|| super::world::corporate_net(0, "US"));
        let host = if burst && self.profile == Profile::Ci {
            self.burst_host
        } else if let Some(h) = rng.pick(&self.hosts) {
            *h
        } else {
            rng.range(0, 65_000) as u16
        };
        let program = rng
            .pick(&self.programs)
            .cloned()
            .unwrap_or_else(|| super::world::program(super::world::Kind::OpenaiPython, 0));
        let model = rng.pick(&self.models).copied().unwrap_or("gpt-4o-mini");
        let mut r = Req {
            key: self.key,
            net,
            host,
            program,
            endpoint: Endpoint::ChatCompletions,
            model,
            max_tokens: if rng.chance(0.5) {
                Some(rng.range(256, 2048))
            } else {
                None
            },
            prompt_chars: (rng.uniform(5.0, 8.5).exp()) as u64,
            sys: if self.dynamic_sys {
                Some(rng.next_u64())
            } else {
                rng.pick(&self.sys).copied()
            },
            root: Some(rng.next_u64()),
            end_user: (self.end_users > 0).then(|| rng.range(0, self.end_users) ^ self.key as u64),
            in_tok: 0,
            out_tok: rng.range(40, 700),
            inflight: 1 + u32::from(rng.chance(0.2)) + u32::from(rng.chance(0.05)),
            verdicts: Vec::new(),
            api_version: self.api_version,
        };
        r.in_tok = r.prompt_chars / 4 + 10;
        if (self.profile == Profile::Batch || self.nightly) && burst {
            r.inflight = rng.range(3, 9) as u32;
        }
        if rng.chance(self.image_share) {
            r.endpoint = Endpoint::ImagesGenerations;
            r.model = "dall-e-3";
            r.max_tokens = None;
            r.out_tok = 0;
            r.prompt_chars = rng.range(40, 400);
            r.in_tok = r.prompt_chars / 4;
        } else if rng.chance(self.embed_share) {
            r.endpoint = Endpoint::Embeddings;
            r.model = "text-embedding-3-small";
            r.max_tokens = None;
            r.out_tok = 0;
            r.sys = None;
        } else if rng.chance(self.probe_share)
            || burst && self.profile == Profile::Ci && rng.chance(0.3)
        {
            r.max_tokens = Some(1);
            r.prompt_chars = rng.range(2, 30);
            r.in_tok = 8;
            r.out_tok = 1;
        } else if self.lists_models && rng.chance(0.02) {
            r.endpoint = Endpoint::Models;
            r.max_tokens = None;
            r.prompt_chars = 0;
            r.sys = None;
            r.root = None;
            r.in_tok = 0;
            r.out_tok = 0;
        }
        if rng.chance(self.roleplay_share) {
            r.verdicts
                .push(verdict(VerdictCategory::RoleplayMarkers, Action::Log, 1.0));
        }
        if rng.chance(self.hit_share) {
            r.verdicts
                .push(verdict(Category::Sexual, Action::Flag, 0.7));
        }
        r
    }
}

/// An attacker's client: where it sends from and what it looks like.
#[derive(Debug, Clone)]
pub struct Client {
    /// Networks (several: rotates through them per request).
    pub nets: Vec<Net>,
    /// Host part.
    pub host: u16,
    /// Program.
    pub program: Program,
}

/// How a relay's buyers use a key.
#[derive(Debug, Clone)]
pub struct RelayMix {
    /// Requests per hour.
    pub rate: f64,
    /// Buyers' system prompts.
    pub sys: Arc<Vec<u64>>,
    /// Share of image generations.
    pub image: f64,
    /// Share of content-safety hits.
    pub hit: f64,
    /// Share of obfuscated prompts.
    pub evasion: f64,
    /// Share with role-play markers or jailbreak preambles.
    pub roleplay: f64,
    /// In-flight range.
    pub inflight: (u32, u32),
}

/// One step of an attack script.
#[derive(Debug, Clone)]
pub enum Seg {
    /// Wait.
    Wait(i64),
    /// Validation: optionally list models, then `tiny` zero-cost probes.
    Probe {
        /// Key.
        key: usize,
        /// Client index.
        client: usize,
        /// List models first.
        listing: bool,
        /// Tiny probes.
        tiny: u8,
    },
    /// A checker's periodic micro-requests.
    Checker {
        /// Key.
        key: usize,
        /// Client.
        client: usize,
        /// Period, seconds.
        period: f64,
        /// Requests.
        count: u32,
    },
    /// A takeover of a young key: scripted steps from the attacker's client, every one of
    /// them abuse (the key is in someone else's hands from the first request).
    Sequence {
        /// Key.
        key: usize,
        /// Client.
        client: usize,
        /// The steps, in order.
        steps: Vec<Step>,
        /// Gap between steps, milliseconds (low, high).
        gap_ms: (u64, u64),
    },
    /// Relay traffic of buyers (the abuse phase).
    Relay {
        /// Key.
        key: usize,
        /// Client.
        client: usize,
        /// Longest duration, hours.
        hours: f64,
        /// Keeps retrying a refused key at a slow pace instead of giving up.
        persistent: bool,
    },
}

/// One step of a takeover sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A zero-cost probe (`max_tokens` 1, an almost empty prompt).
    Probe,
    /// A model listing.
    Listing,
    /// A role-play front end's request (character-card markers).
    Roleplay,
    /// An ordinary-looking chat request.
    Chat,
}

/// An attacker, following its script.
#[derive(Debug, Clone)]
pub struct Attack {
    /// Scenario index.
    pub scenario: usize,
    /// Clients.
    pub clients: Vec<Client>,
    /// Buyers.
    pub mix: RelayMix,
    /// The script.
    pub script: Vec<Seg>,
    /// Position in the script.
    pub pos: usize,
    /// Steps done in the current segment.
    pub done: u32,
    /// When the current segment started.
    pub seg_start: i64,
    /// Retries after the key was stopped.
    pub retries: u32,
}

/// What the attacker sees of the gateway.
pub trait GatewayView {
    /// Whether the key refuses requests (suspended, revoked, canary).
    fn stopped(&self, key: usize) -> bool;
}

/// A scripted request plus whether it belongs to the abuse phase.
pub struct AttackReq {
    /// The request.
    pub req: Req,
    /// Part of the abuse phase.
    pub abuse: bool,
}

impl Attack {
    /// The next request and the time of the one after (`None`: the attacker is done).
    pub fn step(
        &mut self,
        t_ms: i64,
        rng: &mut Rng,
        gw: &dyn GatewayView,
    ) -> (Option<AttackReq>, Option<i64>) {
        loop {
            let Some(seg) = self.script.get(self.pos).cloned() else {
                return (None, None);
            };
            match seg {
                Seg::Wait(ms) => {
                    self.advance(t_ms);
                    return (None, Some(t_ms + ms));
                }
                Seg::Probe {
                    key,
                    client,
                    listing,
                    tiny,
                } => {
                    let total = u32::from(listing) + u32::from(tiny);
                    if self.done >= total {
                        self.advance(t_ms);
                        continue;
                    }
                    let mut r = self.base_req(key, client, rng);
                    if listing && self.done == 0 {
                        make_listing(&mut r);
                    } else {
                        make_probe(&mut r, rng);
                    }
                    self.done += 1;
                    return (
                        Some(AttackReq {
                            req: r,
                            abuse: false,
                        }),
                        Some(t_ms + rng.range(5_000, 120_000) as i64),
                    );
                }
                Seg::Checker {
                    key,
                    client,
                    period,
                    count,
                } => {
                    if self.done >= count || gw.stopped(key) {
                        self.advance(t_ms);
                        continue;
                    }
                    let mut r = self.base_req(key, client, rng);
                    make_probe(&mut r, rng);
                    r.max_tokens = Some(5);
                    r.prompt_chars = 12;
                    self.done += 1;
                    let jitter = period * rng.uniform(-0.01, 0.01);
                    return (
                        Some(AttackReq {
                            req: r,
                            abuse: false,
                        }),
                        Some(t_ms + ((period + jitter) * 1000.0) as i64),
                    );
                }
                Seg::Sequence {
                    key,
                    client,
                    steps,
                    gap_ms,
                } => {
                    let Some(step) = steps.get(self.done as usize).copied() else {
                        self.advance(t_ms);
                        continue;
                    };
                    let mut r = self.base_req(key, client, rng);
                    match step {
                        Step::Probe => make_probe(&mut r, rng),
                        Step::Listing => make_listing(&mut r),
                        Step::Roleplay => {
                            self.relay_content(&mut r, rng);
                            r.endpoint = Endpoint::ChatCompletions;
                            r.model = "gpt-4o";
                            r.verdicts =
                                vec![verdict(VerdictCategory::RoleplayMarkers, Action::Log, 1.0)];
                        }
                        Step::Chat => {
                            self.relay_content(&mut r, rng);
                            r.endpoint = Endpoint::ChatCompletions;
                            r.model = "gpt-4o";
                            r.verdicts.clear();
                        }
                    }
                    self.done += 1;
                    return (
                        Some(AttackReq {
                            req: r,
                            abuse: true,
                        }),
                        Some(t_ms + rng.range(gap_ms.0, gap_ms.1.max(gap_ms.0 + 1)) as i64),
                    );
                }
                Seg::Relay {
                    key,
                    client,
                    hours,
                    persistent,
                } => {
                    if self.done == 0 {
                        self.seg_start = t_ms;
                        self.retries = 0;
                    }
                    let over = t_ms - self.seg_start > (hours * HOUR_MS as f64) as i64;
                    let stopped = gw.stopped(key);
                    if over || stopped && !persistent && self.retries >= 4 {
                        self.advance(t_ms);
                        // The relay reloads another key a while later.
                        return (None, Some(t_ms + rng.range(600_000, 3_600_000) as i64));
                    }
                    let mut r = self.base_req(key, client, rng);
                    self.relay_content(&mut r, rng);
                    self.done += 1;
                    let gap = if stopped {
                        self.retries += 1;
                        rng.range(60_000, 600_000) as i64
                    } else {
                        (rng.exp(3_600_000.0 / self.mix.rate.max(0.1)) as i64).max(100)
                    };
                    return (
                        Some(AttackReq {
                            req: r,
                            abuse: true,
                        }),
                        Some(t_ms + gap),
                    );
                }
            }
        }
    }

    fn advance(&mut self, t_ms: i64) {
        self.pos += 1;
        self.done = 0;
        self.seg_start = t_ms;
    }

    fn base_req(&self, key: usize, client: usize, rng: &mut Rng) -> Req {
        let c = self.clients.get(client).or_else(|| self.clients.first());
        let (net, host, program) = match c {
            Some(c) => (
                rng.pick(&c.nets)
                    .cloned()
                    .unwrap_or_else(|| super::world::corporate_net(0, "US")),
                if c.nets.len() > 1 {
                    rng.range(1, 60_000) as u16
                } else {
                    c.host
                },
                c.program.clone(),
            ),
            None => (
                super::world::corporate_net(0, "US"),
                1,
                super::world::program(super::world::Kind::Curl, 0),
            ),
        };
        Req {
            key,
            net,
            host,
            program,
            endpoint: Endpoint::ChatCompletions,
            model: "gpt-4o",
            max_tokens: Some(rng.range(300, 4000)),
            prompt_chars: (rng.uniform(6.0, 9.0).exp()) as u64,
            sys: None,
            root: Some(rng.next_u64()),
            end_user: None,
            in_tok: 0,
            out_tok: 0,
            inflight: 1,
            verdicts: Vec::new(),
            api_version: None,
        }
    }

    fn relay_content(&self, r: &mut Req, rng: &mut Rng) {
        let m = &self.mix;
        r.sys = rng.pick(&m.sys).copied();
        r.end_user = rng.chance(0.3).then(|| rng.range(0, 1_000_000));
        r.in_tok = r.prompt_chars / 4 + 20;
        r.out_tok = rng.range(200, 1500);
        r.inflight = rng.range(u64::from(m.inflight.0), u64::from(m.inflight.1) + 1) as u32;
        if rng.chance(m.image) {
            r.endpoint = Endpoint::ImagesGenerations;
            r.model = "dall-e-3";
            r.max_tokens = None;
            r.out_tok = 0;
            r.prompt_chars = rng.range(60, 600);
            r.in_tok = r.prompt_chars / 4;
        }
        if rng.chance(m.roleplay) {
            r.verdicts.push(if rng.chance(0.7) {
                verdict(VerdictCategory::RoleplayMarkers, Action::Log, 1.0)
            } else {
                verdict(Category::Jailbreak, Action::Flag, 0.8)
            });
        }
        if rng.chance(m.hit) {
            let cat = if r.endpoint == Endpoint::ImagesGenerations {
                Category::RealPersonSexual
            } else {
                Category::Sexual
            };
            r.verdicts.push(verdict(cat, Action::Block, 0.9));
        }
        if rng.chance(m.evasion) {
            r.verdicts
                .push(verdict(Category::FilterEvasion, Action::Flag, 0.7));
        }
    }
}

fn make_listing(r: &mut Req) {
    r.endpoint = Endpoint::Models;
    r.max_tokens = None;
    r.prompt_chars = 0;
    r.root = None;
    r.in_tok = 0;
    r.out_tok = 0;
}

fn make_probe(r: &mut Req, rng: &mut Rng) {
    r.endpoint = Endpoint::ChatCompletions;
    r.model = "gpt-4o-mini";
    r.max_tokens = Some(1);
    r.prompt_chars = rng.range(1, 4);
    r.in_tok = 8;
    r.out_tok = 1;
}
