//! Validation: V1 zero-cost probes, V2 enumerate-then-invoke, V4 periodic micro-requests.

use stormwall_types::{Alert, DetectorId, Severity};

use super::{Ctx, Finding, feat};
use crate::state::{KeyState, Reference};

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
    let sev = if new_source && far {
        Severity::High
    } else if burst || new_source && !habitual {
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
    let sev = if new_source && ctx.far(ks) {
        Severity::High
    } else {
        Severity::Medium
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
