//! Validation: V1 zero-cost probes, V2 enumerate-then-invoke, V4 periodic micro-requests.

use stormwall_types::{Alert, DetectorId, Severity};

use super::{Ctx, Finding, feat};
use crate::state::{KeyState, Reference, has_flag};

/// Share of a key's traffic below which a behaviour counts as "never".
const RARE_SHARE: f64 = 0.01;

/// V1: a generation that asks for (almost) nothing — a liveness probe. One from a new
/// source is high; a burst from a known one is medium, unless probes are this key's habit
/// (CI smoke tests).
pub fn v1_probe(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !ctx.o.probe || matches!(ctx.reference, Reference::Learning) {
        return;
    }
    let new_source = !ctx.known_asn(ks);
    let far = ctx.far(ks);
    let share = ks.base.probes as f64 / (ks.base.inference.max(1)) as f64;
    let habitual = share >= RARE_SHARE;
    let burst_thr = f64::from(ctx.th().v1_probes_per_min) * ks.factor(DetectorId::V1);
    let burst = f64::from(ks.minute_probes) >= burst_thr && !habitual;
    // A probe from a new network nearby is a developer trying the key as often as a
    // checker: low on its own (the incident combines it with what follows).
    // From far away with the key's own client (its developer abroad) it is low too.
    let sev = if new_source && far && !ctx.own_client_anywhere(ks) {
        Severity::High
    } else if burst {
        Severity::Medium
    } else if new_source {
        Severity::Low
    } else {
        return;
    };
    let max_tokens = ctx.e.max_tokens;
    ctx.emit(ks, out, DetectorId::V1, sev, |ks| Finding {
        explanation: format!(
            "Key {} sent a zero-cost probe (max_tokens {}, {} prompt characters) from {}{}. \
             Stolen keys are tested this way before they are sold.",
            ks.key,
            max_tokens.map_or("unset".to_owned(), |m| m.to_string()),
            ctx.e.prompt_chars,
            ctx.source(),
            if new_source {
                ", a network this key has not used"
            } else {
                ""
            },
        ),
        features: vec![
            feat(
                "probes_this_minute",
                f64::from(ks.minute_probes),
                Some(burst_thr),
            ),
            feat("probe_share_baseline", share, Some(RARE_SHARE)),
            feat("new_source", f64::from(u8::from(new_source)), None),
        ],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// V2: a model listing followed by inference on the same key within the window, when the
/// listing came from a new source or the key never lists models.
pub fn v2_enumerate(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if ctx.o.listing {
        let new_source = !ctx.known_asn(ks) || ctx.far(ks);
        ks.notable.last_listing = Some((ctx.o.t, ctx.e.id.clone(), new_source));
        return;
    }
    if !ctx.o.inference || matches!(ctx.reference, Reference::Learning) {
        return;
    }
    let Some((at, _, new_source)) = ks.notable.last_listing.as_ref() else {
        return;
    };
    let gap = ctx.o.t - at;
    let window = f64::from(ctx.th().v2_window_secs) / ks.factor(DetectorId::V2);
    if gap < 0 || gap as f64 > window {
        return;
    }
    let never_lists = ks.base.listings == 0 && matches!(ctx.reference, Reference::Key)
        || matches!(ctx.reference, Reference::Tenant)
            && ctx.tenant.is_some_and(|t| t.listings == 0);
    let new_source = *new_source;
    if !new_source && !never_lists {
        return;
    }
    // Nearby, listing then calling is what a developer's first session and SDK start-up
    // look like: low unless it comes from far away.
    let sev = if new_source && ctx.far(ks) && !ctx.own_client_anywhere(ks) {
        Severity::High
    } else {
        Severity::Low
    };
    let listing_id = ks.notable.last_listing.take().map(|l| l.1);
    ctx.emit(ks, out, DetectorId::V2, sev, |ks| Finding {
        explanation: format!(
            "Key {} listed the models and then called inference {gap} s later{}. \
             Enumerate-then-invoke is how key checkers find out what a stolen key can do.",
            ks.key,
            if new_source {
                ", with the listing from a network this key has not used"
            } else {
                ", and this key does not normally list models"
            }
        ),
        features: vec![feat("seconds_between", gap as f64, Some(window))],
        subjects: ctx.source_subjects(),
        evidence: listing_id.into_iter().collect(),
    });
}

/// V4: micro-requests from one address at a steady period (low coefficient of variation of
/// the inter-arrival times): a checker keeping the key "alive" on its list.
pub fn v4_periodic(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !ctx.o.micro || matches!(ctx.reference, Reference::Learning) {
        return;
    }
    let cycles = ctx.th().v4_min_cycles as usize;
    let min_period = ctx.th().v4_min_period_secs;
    let max_cv = ctx.th().v4_max_cv / ks.factor(DetectorId::V4);
    let new_source = !ctx.known_asn(ks) || ctx.far(ks);
    let (times, ids) = ks.push_micro(ctx.o.ip, ctx.o.t, &ctx.e.id);
    if times.len() < cycles + 1 {
        return;
    }
    let start = times.len() - (cycles + 1);
    let intervals: Vec<f64> = times
        .iter()
        .skip(start)
        .zip(times.iter().skip(start + 1))
        .map(|(a, b)| (b - a) as f64)
        .collect();
    let n = intervals.len() as f64;
    let mean = intervals.iter().sum::<f64>() / n;
    if mean < min_period {
        return;
    }
    let var = intervals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let cv = var.sqrt() / mean;
    if cv >= max_cv || !new_source {
        return;
    }
    let evidence: Vec<String> = ids.iter().skip(start).cloned().collect();
    ctx.emit(ks, out, DetectorId::V4, Severity::Medium, |ks| Finding {
        explanation: format!(
            "Key {} received {} micro-requests from {} every {:.0} s (variation {:.3}), from a \
             network it does not normally use: the rhythm of a key checker.",
            ks.key,
            cycles + 1,
            ctx.source(),
            mean,
            cv
        ),
        features: vec![
            feat("period_secs", mean, Some(min_period)),
            feat("interval_cv", cv, Some(max_cv)),
            feat("cycles", cycles as f64, Some(cycles as f64)),
        ],
        subjects: ctx.source_subjects(),
        evidence,
    });
}

/// V7 signal kinds: (bit, weight, name). Each counts once per takeover window.
const V7_SIGNALS: [(u32, u32, &str); 10] = [
    (1 << 0, 1, "new_network"),
    (1 << 1, 1, "new_country"),
    (1 << 2, 1, "new_egress_kind"),
    (1 << 3, 1, "new_client"),
    (1 << 4, 1, "probe"),
    (1 << 5, 1, "model_listing"),
    (1 << 6, 2, "roleplay_markers"),
    (1 << 7, 1, "relay_artefacts"),
    (1 << 8, 1, "spread_or_rate_jump"),
    (1 << 11, 1, "resold_prompts"),
];
/// Bits of the network signals (one of them must be present).
const V7_NETWORK: u32 = 0b11;
/// Bits of the intent signals (one of them must be present): a probe, a listing, role-play
/// markers, a relay artefact or resold prompts — someone testing or reselling the key.
/// Spread and rate are not among them: an app's first deployment after its developer's
/// curl has them too.
const V7_INTENT: u32 = 0b1000_1111_0000;
/// Bit of the new-client signal.
const V7_NEW_CLIENT: u32 = 1 << 3;
/// Bits of the signals that test a key: a probe, a listing, relay artefacts.
const V7_TESTS: u32 = (1 << 4) | (1 << 5) | (1 << 7);
/// Bit of the role-play signal.
const V7_ROLEPLAY: u32 = 1 << 6;
/// Seconds a takeover window stays open after its first foreign request.
pub const V7_WINDOW: i64 = 3_600;
/// Bit (outside the signal table: no points of its own) of a probe or listing by a new
/// client that the owner or tenant sends habitually, or that a client sent while it passed
/// for the owner's new tool: no test on a network the owner never used, but inside the
/// owner's /24 a new client's test all the same (see `inside`).
const V7_HABIT_TEST: u32 = 1 << 9;
/// Bit (outside the signal table: no points of its own) of a relay-only artefact, an empty
/// `Origin` or `Referer`: a web front end's relay forwards them blank; no developer's tool,
/// SDK or browser sends one empty. Inside the owner's /24 it stands for role-play as the
/// sign of someone else's front end (see `inside`).
const V7_RELAY_ONLY: u32 = 1 << 10;
/// Bits of a probe and a model listing.
const V7_PROBE_OR_LISTING: u32 = (1 << 4) | (1 << 5);
/// Distinct system prompts that foreign requests spread over several networks must bring
/// for the resold-prompts signal: a reseller's customers each bring their own.
const V7_RESOLD_PROMPTS: usize = 3;

/// A system prompt's hash as the owner record keeps it (16 bits, never 0).
fn prompt16(h: u64) -> u16 {
    (crate::sketch::mix64(h) as u16).max(1)
}

/// The takeover points of a set of V7 signal kinds.
pub fn v7_points(kinds: u32) -> u32 {
    V7_SIGNALS
        .iter()
        .filter(|(b, _, _)| kinds & b != 0)
        .map(|(_, w, _)| w)
        .sum()
}

/// V7: a young key taken over. While a key has no baseline of its own, its owner is what
/// its first requests looked like, and its tenant's other keys say which networks and
/// clients the tenant uses. A request whose network **or** client neither knows is
/// foreign; its takeover signals (a new network, country or egress kind, a new client,
/// a zero-cost probe, a model listing, role-play markers, relay artefacts, many addresses or
/// a jump in rate) add up over the next hour, each kind once. At `v7_min_points`, with a
/// network signal and an intent signal among them, the key is being validated or resold
/// by someone else: high. A new key used from the tenant's own networks and clients
/// never gets here; a developer's first curl from home scores four at most.
pub fn v7_takeover(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    use crate::state::{OWNER_LISTS, OWNER_PROBES, slot_has, slot_put};
    if matches!(ctx.reference, Reference::Key) {
        return;
    }
    let o = ctx.o;
    let asn = o.asn.unwrap_or(0);
    let cc = o.cc.map_or(0, u16::from_be_bytes);
    let shape = (o.shape as u32) | 1;
    let fam = 1u32 << (o.family.id() & 31);
    let tenant = ctx.tenant;
    let owner = &ks.owner;
    let first = owner.requests == 0 && tenant.is_none_or(|t| t.asns.is_empty());
    let asn_known =
        asn == 0 || slot_has(&owner.asns, asn) || tenant.is_some_and(|t| t.asns.contains(o.asn_h));
    let cc_known = cc == 0
        || slot_has(&owner.countries, cc)
        || o.country_h
            .is_some_and(|h| tenant.is_some_and(|t| t.countries.contains(h)));
    // An official SDK's user agent without the SDK's own headers is someone's forgery: it is
    // known by its exact header shape only, never by the family it claims (a taker on the
    // owner's network claiming the owner's SDK is not the owner).
    let forged = o.family.is_stainless_sdk() && !o.stainless;
    let family_known = !forged
        && (owner.families & fam != 0
            || tenant.is_some_and(|t| t.families.contains(o.family.id())));
    let mut client_known = slot_has(&owner.shapes, shape)
        || family_known
        || tenant.is_some_and(|t| t.shapes.contains(o.shape));
    let net24 = (crate::sketch::mix64(o.net) as u16).max(1);
    // A new client on another /24 of the owner's own ASN in a country the owner or tenant
    // uses, when the owner is one household line or a few app hosts (not a pool it rotates
    // through): someone else on the same residential ISP or in the same cloud region. It
    // counts as a new network. (Another country of a cloud ASN is another region: the
    // new-country signal speaks for it, and a CI job's runners there are no neighbour.)
    let app_users = matches!(
        o.family,
        crate::features::UaFamily::Okhttp | crate::features::UaFamily::CfNetwork
    ) && o.flag.is_none();
    let neighbour = asn != 0
        && cc_known
        && slot_has(&owner.asns, asn)
        && !client_known
        && !app_users
        && owner.nets[0] != 0
        && owner.nets[3] == 0
        && !slot_has(&owner.nets, net24);
    // A country next door to the owner's or the tenant's, reached over an ordinary line, is
    // a developer at home across the border from the company's cloud region, not a
    // takeover's far-away server: no new-country point (the far/near policy of the other
    // detectors).
    let near = !cc_known
        && o.flag.is_none()
        && o.cc.is_some_and(|c| {
            ks.owner
                .countries
                .iter()
                .filter(|&&x| x != 0)
                .map(|x| x.to_be_bytes())
                .chain(tenant.map(|t| t.home).filter(|h| *h != [0, 0]))
                .any(|home| super::near_countries(home, c))
        });
    // A bridge: the owner's network seen with a new client, or the owner's very header
    // shape seen on a new network next door of a kind the owner uses, doing ordinary work
    // (no probe, listing, role-play or relay artefact) — a CI job's second tool, its other
    // runner pool. A takeover brings a new client on a new network, and tests the key.
    let roleplay_habit = ks.base.roleplay > 0 || tenant.is_some_and(|t| t.roleplay > 0);
    let intent = o.probe
        || o.listing
        || o.roleplay && !roleplay_habit
        || ctx.e.origin.as_deref() == Some("")
        || ctx.e.referer.as_deref() == Some("")
        || ctx.e.forwarded
        || o.family.is_stainless_sdk() && !o.stainless;
    let owner_flags = owner.flags | tenant.map_or(0, |t| t.flags);
    // The owner's very header shape on a new network of a kind it uses, in a known or near
    // country: its other runner pool or office line.
    let owner_shape_nearby = !asn_known
        && o.flag.is_none_or(|f| has_flag(owner_flags, f))
        && (cc_known || near)
        && (slot_has(&owner.shapes, shape) || tenant.is_some_and(|t| t.shapes.contains(o.shape)));
    // A client bridged in as the owner's new tool by its ordinary chat, which then fronts
    // role-play on a tenant without it within the hour, was a taker whose first request was
    // ordinary: foreign again, and a probe or listing it sent meanwhile was its test. (Its
    // tests alone prove nothing: a CI job's second tool probes and lists too.)
    let bridged = ks.takeover.as_ref().and_then(|t| {
        t.bridged
            .iter()
            .find(|b| b.0 == shape && o.t - b.1 <= V7_WINDOW)
            .copied()
    });
    let provisional = bridged.is_some() && o.roleplay && !roleplay_habit;
    if provisional {
        client_known = false;
    }
    // A client that tested the key in the open takeover window is the taker doing its
    // ordinary work next (a chat after its probe), not the owner's new tool.
    let tester = ks
        .takeover
        .as_ref()
        .is_some_and(|t| o.t - t.since <= V7_WINDOW && t.testers.contains(&shape));
    let bridge = !intent
        && !tester
        && o.flag.is_none_or(|f| has_flag(owner_flags, f))
        && (asn_known && !client_known || owner_shape_nearby);
    if first || asn_known && client_known || bridge {
        // A new client on the owner's network, learned on ordinary work alone: remembered
        // for the hour, in case it tests the key next (`provisional`).
        if bridge && asn_known && !client_known && !first {
            let tk = ks.takeover.get_or_insert_with(Box::default);
            tk.bridged.retain(|b| o.t - b.1 <= V7_WINDOW);
            if tk.bridged.len() < 4 && !tk.bridged.iter().any(|b| b.0 == shape) {
                tk.bridged.push((shape, o.t, false));
            }
        } else if bridged.is_some()
            && (o.probe || o.listing)
            && let Some(b) = ks
                .takeover
                .as_mut()
                .and_then(|t| t.bridged.iter_mut().find(|b| b.0 == shape))
        {
            b.2 = true;
        }
        // The owner (or the tenant's own client on its own network): learn it.
        let owner = &mut ks.owner;
        if asn != 0 {
            slot_put(&mut owner.asns, asn);
        }
        slot_put(&mut owner.nets, net24);
        slot_put(&mut owner.countries, cc);
        slot_put(&mut owner.shapes, shape);
        if let Some(h) = o.sys_h {
            slot_put(&mut owner.prompts, prompt16(h));
        }
        owner.families |= fam;
        if let Some(f) = o.flag {
            owner.flags |= f.bit();
        }
        if o.probe {
            owner.habits |= OWNER_PROBES;
        }
        if o.listing {
            owner.habits |= OWNER_LISTS;
        }
        owner.requests = owner.requests.saturating_add(1);
        // The owner probing or listing itself (a CI job's smoke test in the same burst as
        // its other runners) takes that point back from an open takeover window.
        if let Some(tk) = ks.takeover.as_mut() {
            tk.kinds &= !((u32::from(o.probe) << 4) | (u32::from(o.listing) << 5));
        }
        return;
    }
    // Probes and listings the owner (or the tenant's keys, habitually) send themselves —
    // CI smoke tests, an SDK's start-up listing — are no sign of someone else testing.
    let habitual =
        |n: u64| tenant.is_some_and(|t| n as f64 >= RARE_SHARE * t.requests.max(1) as f64);
    let probe_habit =
        ks.owner.habits & OWNER_PROBES != 0 || habitual(tenant.map_or(0, |t| t.probes));
    let listing_habit =
        ks.owner.habits & OWNER_LISTS != 0 || habitual(tenant.map_or(0, |t| t.listings));
    // A phone's HTTP stack on a consumer network (`app_users`) is an app's end users
    // arriving on new devices and carriers, not a takeover tool: no new-client point.
    let known_flags = ks.owner.flags | tenant.map_or(0, |t| t.flags) | ks.base.flags;
    let new_flag = o.flag.is_some_and(|f| !has_flag(known_flags, f));
    let artefacts = ctx.e.origin.as_deref() == Some("")
        || ctx.e.referer.as_deref() == Some("")
        || ctx.e.forwarded
        || o.family.is_stainless_sdk() && !o.stainless;
    let tk = ks.takeover.get_or_insert_with(Box::default);
    if tk.kinds == 0 || o.t - tk.since > V7_WINDOW {
        **tk = crate::state::Takeover {
            since: o.t,
            bridged: std::mem::take(&mut tk.bridged),
            ..Default::default()
        };
    }
    let minute = o.t.div_euclid(60);
    tk.minute = if tk.minute.0 == minute {
        (minute, tk.minute.1 + 1)
    } else {
        (minute, 1)
    };
    // Spread counts networks new to the owner and tenant: the owner's own cloud seen with
    // another of its clients (CI on a second runner pool) is no reseller's spread.
    if !asn_known && tk.nets.len() < 8 && !tk.nets.contains(&o.net) {
        tk.nets.push(o.net);
    }
    if !asn_known && tk.asns.len() < 8 && asn != 0 && !tk.asns.contains(&asn) {
        tk.asns.push(asn);
    }
    // System prompts the owner never sent that a new client brings on networks new to the
    // owner and tenant. An app deployed after its developer tried the key brings the
    // prompts the developer tried; an owner with more prompts than the record holds is
    // not judged this way (a templated prompt per user is no reseller's customer).
    if let Some(h) = o.sys_h
        && !asn_known
        && !client_known
        && !slot_has(&ks.owner.prompts, prompt16(h))
        && ks.owner.prompts.contains(&0)
        && tk.prompts.len() < V7_RESOLD_PROMPTS
        && !tk.prompts.contains(&h)
    {
        tk.prompts.push(h);
    }
    // A cloud app's hosts are several /24s of one provider: spread means networks.
    let spread = tk.nets.len() >= 3 && tk.asns.len() >= 2;
    let mut kinds = 0u32;
    for (bit, on) in [
        (1 << 0, !asn_known || neighbour),
        (1 << 1, !cc_known && !near),
        (1 << 2, new_flag),
        (1 << 3, !client_known && !app_users),
        // The owner's own client probing or listing from its other runner pool is its CI,
        // not someone testing the key: no intent point (the network still counts).
        (1 << 4, o.probe && !probe_habit && !owner_shape_nearby),
        (1 << 5, o.listing && !listing_habit && !owner_shape_nearby),
        (1 << 6, o.roleplay && !roleplay_habit),
        (1 << 7, artefacts),
        (1 << 8, spread || tk.minute.1 >= 10),
        // Resale: a new client spread over several networks of several providers whose
        // requests carry several system prompts is many customers' front ends behind one
        // proxy pool, even when none of them probes, lists or fronts role-play yet (held-out
        // seed 223, now tuning: ten plain chats from three networks before the first
        // role-play). An app's first deployment runs one codebase from one provider's hosts,
        // and a phone app's users (`app_users`) bring no new client.
        (
            1 << 11,
            spread && !app_users && tk.prompts.len() >= V7_RESOLD_PROMPTS,
        ),
        (
            V7_RELAY_ONLY,
            ctx.e.origin.as_deref() == Some("") || ctx.e.referer.as_deref() == Some(""),
        ),
        (
            V7_HABIT_TEST,
            (o.probe && probe_habit || o.listing && listing_habit)
                && !client_known
                && !owner_shape_nearby
                || provisional && bridged.is_some_and(|b| b.2),
        ),
    ] {
        if on {
            kinds |= bit;
        }
    }
    if intent && !client_known && tk.testers.len() < 4 && !tk.testers.contains(&shape) {
        tk.testers.push(shape);
    }
    let added = kinds & !tk.kinds;
    tk.kinds |= kinds;
    if added != 0 && tk.evidence.len() < 8 {
        tk.evidence.push(ctx.e.id.clone());
    }
    let all = tk.kinds;
    let points = v7_points(all);
    let min = f64::from(ctx.th().v7_min_points) * ks.factor(DetectorId::V7);
    // Without a network signal (a taker inside the owner's very /24: its office NAT, its
    // household line, its cloud subnet) only a new client fronting role-play on a tenant
    // without it and testing the key besides (a probe, a listing, a relay artefact) is
    // someone else: the owner's developer trying a new tool on its own network probes and
    // lists but brings no role-play front end. That combination is enough on its own (four
    // points: there is no network to add one).
    // A listing or probe the owner sends too counts there as this new client's test (and
    // its point): the owner's SDK listing at start-up says nothing of a role-play front end
    // on another address of the owner's own line.
    // A new client whose requests carry a relay-only artefact (an empty Origin or
    // Referer) and that probes or lists the key is the same on the owner's /24 without any
    // role-play: the owner's developer trying a new tool there sends no blank Origin. Its
    // probe or listing must be its own (the artefact is no test here), and the artefact
    // weighs as role-play does (two points: its own and this one).
    let habit_test = all & V7_TESTS == 0 && all & V7_HABIT_TEST != 0;
    let habit_only = all & V7_PROBE_OR_LISTING == 0 && all & V7_HABIT_TEST != 0;
    let roleplay_inside = all & V7_ROLEPLAY != 0 && (all & V7_TESTS != 0 || habit_test);
    let relay_inside = all & V7_ROLEPLAY == 0
        && all & V7_RELAY_ONLY != 0
        && (all & V7_PROBE_OR_LISTING != 0 || habit_only);
    let inside =
        all & V7_NETWORK == 0 && all & V7_NEW_CLIENT != 0 && (roleplay_inside || relay_inside);
    let fires = if inside {
        let bar = ctx.th().v7_min_points.saturating_sub(1).max(1);
        let points = points
            + u32::from(if relay_inside { habit_only } else { habit_test })
            + u32::from(relay_inside);
        f64::from(points) >= f64::from(bar) * ks.factor(DetectorId::V7)
    } else {
        f64::from(points) >= min && all & V7_NETWORK != 0 && all & V7_INTENT != 0
    };
    if !fires {
        return;
    }
    let names: Vec<&str> = V7_SIGNALS
        .iter()
        .filter(|(b, _, _)| all & b != 0)
        .map(|(_, _, n)| *n)
        .collect();
    let evidence = ks
        .takeover
        .as_ref()
        .map(|t| t.evidence.clone())
        .unwrap_or_default();
    let age_min = (o.t - ks.first_seen) / 60;
    ctx.emit(ks, out, DetectorId::V7, Severity::High, |ks| Finding {
        explanation: format!(
            "Key {}, {age_min} minutes old, is being used from {} by a client neither its \
             first requests nor its tenant's keys ever used, with takeover signals: {}. \
             A young key validated or resold by someone else looks like this.",
            ks.key,
            ctx.source(),
            names.join(", ")
        ),
        features: vec![
            feat("takeover_points", f64::from(points), Some(min)),
            feat("key_age_minutes", age_min as f64, None),
            feat("owner_requests", f64::from(ks.owner.requests), None),
        ],
        subjects: ctx.source_subjects(),
        evidence,
    });
}
