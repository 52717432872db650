//! Tripwires and reappearance: H1 canary use, H2 new network after an exposure report,
//! D1 revoked-key retries, D2 a burned client fingerprint on another key.

use stormwall_types::{Alert, DetectorId, Severity};

use super::{Ctx, Finding, feat, subj};
use crate::state::{Burned, KeyState};

/// H1: any use of a canary key.
pub fn h1_canary(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    ctx.emit(ks, out, DetectorId::H1, Severity::Critical, |ks| Finding {
        explanation: format!(
            "Canary key {} was used from {}. Canary keys are planted bait and never issued to \
             anyone, so whoever holds it collected it from where it was planted; its network, \
             user agent and header shape are indicators of the harvester.",
            ks.key,
            ctx.source()
        ),
        features: vec![feat("canary_uses", 1.0, Some(1.0))],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// D1: a revoked key is still being tried.
pub fn d1_revoked(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    ctx.emit(ks, out, DetectorId::D1, Severity::Medium, |ks| Finding {
        explanation: format!(
            "Revoked key {} was retried from {}. Someone still holds and uses a key that was \
             revoked; the network is an indicator of the relay that used it.",
            ks.key,
            ctx.source()
        ),
        features: vec![feat("revoked_retries", 1.0, Some(1.0))],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// H2: a key reported exposed is used from a network it has never used, soon after.
pub fn h2_after_exposure(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    let Some(exposed) = ks.notable.exposed_at else {
        return;
    };
    let window = i64::from(ctx.th().h2_window_hours) * 3600;
    if ctx.o.t < exposed || ctx.o.t - exposed > window {
        return;
    }
    // Unlike the other novelty checks, a young key is judged against what it has seen so
    // far: after an exposure report any unknown network is suspect.
    let h = ctx.o.asn_h;
    let tenant_knows = ctx.tenant.is_some_and(|t| t.asns.contains(h));
    if ks.base.asns.contains(h)
        || ks.hour.asns.contains(h) && ks.base.asns.is_empty()
        || tenant_knows
    {
        return;
    }
    let hours = (ctx.o.t - exposed) as f64 / 3600.0;
    ctx.emit(ks, out, DetectorId::H2, Severity::High, |ks| Finding {
        explanation: format!(
            "Key {} was reported exposed {hours:.1} h ago and is now used from a network it \
             has never used: {}.",
            ks.key,
            ctx.source()
        ),
        features: vec![feat(
            "hours_since_exposure",
            hours,
            Some(f64::from(ctx.th().h2_window_hours)),
        )],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// D2: the client fingerprint of a stopped key (or a canary's harvester) shows up on this
/// key. Weighted match: same user agent 0.15, same header shape 0.2, same /24 0.45, a
/// system prompt seen with the burned fingerprint 0.2.
pub fn d2_reappearance(
    ctx: &Ctx<'_>,
    ks: &mut KeyState,
    burned: &crate::engine::FastMap<u64, Burned>,
    out: &mut Vec<Alert>,
) {
    if burned.is_empty() {
        return;
    }
    let o = ctx.o;
    let Some(b) = burned.get(&(o.ua_h ^ o.shape)) else {
        return;
    };
    if b.origin == ks.key || b.ua != o.ua_h || b.shape != o.shape {
        return;
    }
    // The key's (or its tenant's) own long-standing client cannot "reappear" on it.
    if ctx.own_client(ks) {
        return;
    }
    let net = b.nets.contains(o.net);
    let sys = o.sys_h.is_some_and(|s| b.sys.contains(s));
    let score = 0.15 + 0.2 + if net { 0.45 } else { 0.0 } + if sys { 0.2 } else { 0.0 };
    let threshold = ctx.th().d2_min_match.min(1.0) * ks.factor(DetectorId::D2).min(1.25);
    if score + 1e-9 < threshold {
        return;
    }
    let origin = b.origin.clone();
    ctx.emit(ks, out, DetectorId::D2, Severity::High, |ks| Finding {
        explanation: format!(
            "The client that used stopped key {origin} reappears on key {}: same user agent and \
             header shape{}{} (match {score:.2}). A relay that lost one key is using another.",
            ks.key,
            if net { ", same /24 network" } else { "" },
            if sys { ", same system prompt" } else { "" },
        ),
        features: vec![feat("fingerprint_match", score, Some(threshold))],
        subjects: {
            let mut s = ctx.source_subjects();
            s.push(subj("burned_on_key", origin.as_str()));
            s
        },
        evidence: Vec::new(),
    });
}
