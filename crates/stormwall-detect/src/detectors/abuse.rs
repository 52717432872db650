//! Abuse: A1 repeated content-safety hits, A4 obfuscated prompts. These are absolute (no
//! baseline needed): a key that keeps asking for prohibited content is a problem from day one.

use stormwall_types::{Alert, DetectorId, Severity};

use super::{Ctx, Finding, feat};
use crate::state::KeyState;

/// A1: safety hits (blocked or flagged verdicts, provider content filters) — several
/// within a few minutes, or a large share of an hour's requests.
pub fn a1_safety(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !ctx.o.hit {
        return;
    }
    ks.push_hit(ctx.o.t, &ctx.e.id);
    let th = ctx.th();
    // A key whose own traffic trips the filter now and then (a medical or role-play app)
    // needs twice the evidence, and never reaches high on this detector alone.
    let usual = ks.base.hits as f64 / ks.base.requests.max(1) as f64;
    let habitual = ks.base.requests >= 100 && usual >= 0.005;
    let f = ks.factor(DetectorId::A1) * if habitual { 2.0 } else { 1.0 };
    let window = i64::from(th.a1_window_secs);
    let recent: Vec<String> = ks
        .notable
        .hits
        .iter()
        .filter(|(t, _)| ctx.o.t - t <= window)
        .map(|(_, id)| id.clone())
        .collect();
    let thr = f64::from(th.a1_hits) * f;
    let share = f64::from(ks.hour.hits) / f64::from(ks.hour.req.max(1));
    let share_thr = (th.a1_share * f).min(1.0);
    let by_count = recent.len() as f64 >= thr;
    // A share needs enough hits to mean anything: 2 of 30 is noise, not a pattern.
    let by_share = ks.hour.req >= 20 && share > share_thr && f64::from(ks.hour.hits) >= thr;
    if !by_count && !by_share {
        return;
    }
    // Hits on the key's own client and network below the burst bar (a habitual tripper, or
    // a busier hour's share) are its app's users (a medical or role-play app): a record on
    // the timeline, not a page. From elsewhere it is abuse of the key.
    let sev = if by_count && !habitual {
        Severity::High
    } else if ctx.own_client(ks) {
        Severity::Low
    } else {
        Severity::Medium
    };
    let n = recent.len();
    ctx.emit(ks, out, DetectorId::A1, sev, |ks| Finding {
        explanation: format!(
            "Key {} hit the content-safety policy {n} times in {} minutes ({:.0} % of this \
             hour's requests). Resold keys are bought to generate what the policy forbids.",
            ks.key,
            window / 60,
            100.0 * share
        ),
        features: vec![
            feat("hits_in_window", n as f64, Some(thr)),
            feat("hit_share_hour", share, Some(share_thr)),
        ],
        subjects: ctx.source_subjects(),
        evidence: recent,
    });
}

/// A4: prompts obfuscated to slip past filters (look-alike characters, zero-width and tag
/// characters, encodings), as recorded by the safety stage.
pub fn a4_obfuscation(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !ctx.o.evasion {
        return;
    }
    if ks.notable.evasions.len() < 16 {
        ks.notable.evasions.push(ctx.e.id.clone());
    }
    let thr = f64::from(ctx.th().a4_hits) * ks.factor(DetectorId::A4);
    let n = ks.notable.evasions.len() as f64;
    if n < thr {
        return;
    }
    let sev = if ks.hour.hits > 0 {
        Severity::High
    } else {
        Severity::Medium
    };
    ctx.emit(ks, out, DetectorId::A4, sev, |ks| Finding {
        explanation: format!(
            "Key {} sent {n:.0} obfuscated prompts this hour (look-alike or hidden characters, \
             encodings){}. Rewriting prompts to slip past filters is evasion.",
            ks.key,
            if ks.hour.hits > 0 {
                ", alongside content-safety hits"
            } else {
                ""
            }
        ),
        features: vec![feat("obfuscated_prompts_hour", n, Some(thr))],
        subjects: ctx.source_subjects(),
        evidence: ks.notable.evasions.clone(),
    });
}
