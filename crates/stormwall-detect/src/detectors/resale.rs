//! Resale: R1 many end-user styles, R2 role-play front-end markers, R3 concurrency and rate
//! spikes, R4 off-hours bursts, R5 spend and volume, R6 model-mix shift.

use stormwall_types::{Alert, DetectorId, Endpoint, Severity};

use super::{Ctx, Finding, feat, subj};
use crate::features::js_divergence;
use crate::profile::Measure;
use crate::state::{KeyState, Reference};

/// Hour-of-day needs this many days of history before "usual" means anything.
const MIN_DAYS_FOR_VOLUME: f32 = 1.0;
/// Off-hours judgement needs this many days.
const MIN_DAYS_FOR_OFF_HOURS: f32 = 3.0;

/// R1: more new system prompts in a day than the key usually sees: many unrelated
/// applications behind one key. New conversation-root clusters alone never fire — a batch
/// job or a support bot sees a new conversation in every request — but they raise the
/// severity when they come with the new system prompts.
pub fn r1_styles(
    ctx: &Ctx<'_>,
    ks: &mut KeyState,
    new_sys: bool,
    _new_cluster: bool,
    out: &mut Vec<Alert>,
) {
    if matches!(ctx.reference, Reference::Learning) || !new_sys {
        return;
    }
    let f = ks.factor(DetectorId::R1);
    let th = ctx.th();
    let (usual_sys, usual_clusters) = match ctx.reference {
        // Until a whole day has been learned, "usual" is unknown: judge prompts against
        // the tenant's zero and leave the noisier clusters alone.
        Reference::Key if ks.base.days_folded == 0 => (0.0, f32::INFINITY),
        Reference::Key => (ks.base.new_sys_day, ks.base.new_clusters_day),
        _ => (0.0, f32::INFINITY),
    };
    let thr_sys = (f64::from(usual_sys) + f64::from(th.r1_new_system_prompts)) * f;
    let thr_cl = (3.0 * f64::from(usual_clusters) + f64::from(th.r1_new_clusters)) * f;
    let sys = ks.day.new_sys.count() as f64;
    let cl = f64::from(ks.day.new_clusters);
    // Buyers' prompts arriving from a network the key never used, on a key with a handful
    // of prompts of its own: the owner's client copied onto a reseller's line. A new app of
    // the owner brings a few prompts from the owner's own networks.
    // A network learned less than a day ago counts as new (its first minutes before an
    // hour boundary may have been a quiet, learned hour).
    let foreign = matches!(ctx.reference, Reference::Key)
        && (!ctx.known_asn(ks) || ks.base.on_probation(ctx.o.asn_h, ctx.o.t));
    if foreign && !ks.base.sys.saturated() {
        ks.hour.new_sys_foreign = ks.hour.new_sys_foreign.saturating_add(1);
    }
    let foreign_thr = (f64::from(th.r1_new_system_prompts).min(3.0) * f).max(2.0);
    let foreign_burst = foreign && f64::from(ks.hour.new_sys_foreign) >= foreign_thr;
    if sys < thr_sys && !foreign_burst {
        return;
    }
    let sev = if sys >= 2.0 * thr_sys || cl >= thr_cl || foreign_burst {
        Severity::High
    } else {
        Severity::Medium
    };
    let users = ks.day.end_users.estimate();
    let sys_hash = ctx.e.system_prompt_hash.clone();
    ctx.emit(ks, out, DetectorId::R1, sev, |ks| Finding {
        explanation: format!(
            "Key {} saw {sys:.0} system prompts and {cl:.0} conversation styles today that it \
             has never seen before (usually {usual_sys:.1} a day), from about {users:.0} end \
             users. A single application keeps a handful of system prompts; many new ones \
             mean many unrelated users share the key.",
            ks.key
        ),
        features: vec![
            feat("new_system_prompts_today", sys, Some(thr_sys)),
            feat("new_root_clusters_today", cl, Some(thr_cl)),
            feat("end_users_today", users, None),
        ],
        subjects: sys_hash
            .map(|h| vec![subj("system_hash", h)])
            .unwrap_or_default(),
        evidence: Vec::new(),
    });
}

/// Learned inference calls a key needs before "always passes an end-user id" means anything.
const USER_HABIT_MIN_CALLS: u64 = 200;
/// Largest bound on a key's share of calls without an end-user id for R1's end-user side.
const USER_HABIT_MAX_MISSING: f64 = 0.25;
/// Chance, at the key's bound share, of as many foreign calls without an id, under which
/// they are not the key's own app.
const USER_MISSING_P: f64 = 1e-4;

/// An upper bound on the share of calls without an end-user id, from `missing` of `calls`
/// learned (about two standard errors above the observed share, never below 1/calls).
fn missing_share_bound(missing: u64, calls: u64) -> f64 {
    if calls == 0 {
        return 1.0;
    }
    let n = calls as f64;
    let p = missing as f64 / n;
    (p + 2.0 * (p * (1.0 - p) / n).sqrt() + 1.0 / n).min(1.0)
}

/// P(X ≥ k) for X ~ Binomial(n, p).
fn binomial_tail(k: u32, n: u32, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // pmf(i) from pmf(i - 1): the terms stay in range for the small counts of one hour.
    let mut pmf = (1.0 - p).powi(n as i32);
    let mut tail = 0.0;
    for i in 0..=n {
        if i >= k {
            tail += pmf;
        }
        pmf *= f64::from(n - i) / f64::from(i + 1) * p / (1.0 - p);
    }
    tail.min(1.0)
}

/// Foreign calls without an end-user id in an hour that make R1 high.
const USER_MISSING_FOREIGN: u8 = 5;

/// R1, the end-user side: a key whose every learned call carries its app's end-user id
/// (`user`) gets calls without one from a network it never used — someone else's users
/// behind the owner's client (a reseller copying the app's SDK onto its own line, where
/// the new prompts of a per-user-prompt app say nothing). High at
/// `USER_MISSING_FOREIGN` such calls in an hour (counted on over one hour boundary; an hour
/// with two or more is not learned): more than a developer's hand-written session from
/// home, which also carries no ids.
pub fn r1_missing_users(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    let o = ctx.o;
    if !matches!(ctx.reference, Reference::Key) || !o.inference || o.probe {
        return;
    }
    let b = &ks.base;
    // The app passes its users' ids on all but a share of its calls that the learned calls
    // bound from above (at most `USER_HABIT_MAX_MISSING`).
    let habit = missing_share_bound(b.no_user, b.inference);
    // A network learned in the last day is still new here: one quiet hour of a reseller's
    // first calls before an hour boundary must not make it the owner's.
    let new_network = !ctx.known_asn(ks) || b.on_probation(o.asn_h, o.t);
    if b.inference < USER_HABIT_MIN_CALLS || habit > USER_HABIT_MAX_MISSING || !new_network {
        return;
    }
    if o.end_user_h.is_some() {
        ks.hour.user_foreign = ks.hour.user_foreign.saturating_add(1);
        return;
    }
    ks.hour.no_user_foreign = ks.hour.no_user_foreign.saturating_add(1);
    let n = ks
        .hour
        .no_user_foreign
        .saturating_add(ks.hour.no_user_foreign_before);
    let thr = (f64::from(USER_MISSING_FOREIGN) * ks.factor(DetectorId::R1)).ceil();
    if f64::from(n) < thr {
        return;
    }
    // Beyond 1 % the count alone is not enough: the new network's calls must lack ids far
    // more often than the key's own ever did.
    if b.no_user * 100 > b.inference {
        let total = u32::from(n) + u32::from(ks.hour.user_foreign);
        if binomial_tail(u32::from(n), total, habit) > USER_MISSING_P {
            return;
        }
    }
    let calls = b.inference as f64;
    let without = b.no_user as f64;
    ctx.emit(ks, out, DetectorId::R1, Severity::High, |ks| Finding {
        explanation: format!(
            "Key {} received {n} calls without an end-user id in the last hour from {}, a \
                 network it never used before the last day; {without:.0} of its {calls:.0} \
                 learned calls came without one. Its app passes its users' ids: these calls are someone else's users behind \
                 the key.",
            ks.key,
            ctx.source(),
        ),
        features: vec![
            feat("calls_without_end_user_hour", f64::from(n), Some(thr)),
            feat("learned_calls", calls, None),
            feat(
                "learned_calls_without_end_user",
                without,
                Some(calls / 100.0),
            ),
        ],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// R2: role-play front-end markers or jailbreak preambles on a key that never had them.
pub fn r2_roleplay(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !ctx.o.roleplay {
        return;
    }
    let usual = match ctx.reference {
        Reference::Learning => return,
        Reference::Key => ks.base.roleplay,
        Reference::Tenant => ks.base.roleplay + ctx.tenant.map_or(0, |t| t.roleplay),
    };
    if usual > 0 {
        return;
    }
    ctx.emit(ks, out, DetectorId::R2, Severity::High, |ks| Finding {
        explanation: format!(
            "A prompt on key {} carries role-play front-end markers (character-card \
             placeholders or a jailbreak preamble); this key has never carried them. Resold \
             keys end up behind role-play front-ends.",
            ks.key
        ),
        features: vec![feat("roleplay_prompts_baseline", usual as f64, Some(0.0))],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// R3: in-flight requests or requests per minute far above the key's usual.
pub fn r3_concurrency(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if matches!(ctx.reference, Reference::Learning) {
        return;
    }
    let th = ctx.th();
    let f = ks.factor(DetectorId::R3);
    let thr_inflight = f64::from(th.r3_min_inflight)
        .max(th.r3_inflight_factor * f64::from(ks.base.peak_inflight))
        * f;
    let days = ks.days();
    let expected_rpm = f64::from(ks.base.expected(Measure::Requests, ctx.o.t, days, 14.0)) / 60.0;
    let thr_rpm = f64::from(th.r3_min_rpm)
        .max(th.r3_rate_factor * expected_rpm.max(f64::from(ks.base.peak_rpm) / 2.0))
        * f;
    let inflight = f64::from(ctx.e.inflight);
    let rpm = f64::from(ks.minute_req.max(ctx.global.requests_minute.unwrap_or(0)));
    if inflight < thr_inflight && rpm < thr_rpm {
        return;
    }
    ctx.emit(ks, out, DetectorId::R3, Severity::Medium, |ks| Finding {
        explanation: format!(
            "Key {} had {inflight:.0} requests in flight and {rpm:.0} requests this minute; \
             its usual peak is {:.0} in flight. Many buyers behind one key push concurrency \
             far above what its application needs.",
            ks.key, ks.base.peak_inflight
        ),
        features: vec![
            feat("inflight", inflight, Some(thr_inflight)),
            feat("requests_per_minute", rpm, Some(thr_rpm)),
        ],
        subjects: Vec::new(),
        evidence: Vec::new(),
    });
}

/// R4: a burst of tokens in an hour that normally carries almost none of the key's day.
pub fn r4_off_hours(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !matches!(ctx.reference, Reference::Key) || ks.hour.r4_fired {
        return;
    }
    let days = ks.days();
    if days < MIN_DAYS_FOR_OFF_HOURS {
        return;
    }
    let daily = f64::from(ks.base.daily(Measure::Tokens, days));
    if daily <= 0.0 {
        return;
    }
    let usual = f64::from(ks.base.expected(Measure::Tokens, ctx.o.t, days, 14.0));
    let share = usual / daily;
    let th = ctx.th();
    let burst = ks.hour.tok as f64;
    let thr = th.r4_burst_share * daily * ks.factor(DetectorId::R4);
    if share >= th.r4_quiet_share || burst < thr {
        return;
    }
    ks.hour.r4_fired = true;
    // Night batches start and move: off-hours volume alone is low; with another resale or
    // proxy signal the incident makes it more.
    ctx.emit(ks, out, DetectorId::R4, Severity::Low, |ks| Finding {
        explanation: format!(
            "Key {} used {burst:.0} tokens this hour, {:.0} % of a usual day, in an hour that \
             normally carries {:.2} % of its traffic. Resold keys run around the clock.",
            ks.key,
            100.0 * burst / daily,
            100.0 * share
        ),
        features: vec![
            feat("hour_tokens", burst, Some(thr)),
            feat("usual_hour_share", share, Some(th.r4_quiet_share)),
        ],
        subjects: Vec::new(),
        evidence: Vec::new(),
    });
}

/// R5: spend this hour, or calls to one model, far above the key's usual.
pub fn r5_volume(ctx: &Ctx<'_>, ks: &mut KeyState, model_calls: u32, out: &mut Vec<Alert>) {
    if !matches!(ctx.reference, Reference::Key) {
        return;
    }
    let days = ks.days();
    if days < MIN_DAYS_FOR_VOLUME {
        return;
    }
    let th = ctx.th();
    let f = ks.factor(DetectorId::R5);
    let usual_h = f64::from(ks.base.expected(Measure::Cost, ctx.o.t, days, 14.0));
    let usual_avg = f64::from(ks.base.daily(Measure::Cost, days)) / 24.0;
    let thr_cost = th
        .r5_min_usd_hour
        .max(th.r5_cost_factor * usual_h.max(usual_avg))
        * f;
    let cost = ks.hour.cost.max(ctx.global.usd_hour.unwrap_or(0.0));
    let thr_calls =
        f64::from(th.r5_calls_per_model_hour).max(3.0 * f64::from(ks.base.peak_model_calls_h)) * f;
    let calls = f64::from(model_calls);
    if cost < thr_cost && calls < thr_calls {
        return;
    }
    // More spend from the owner's own client on its own network is a new app or a busy
    // day: low unless it is extreme.
    let sev = if cost >= 3.0 * thr_cost {
        Severity::High
    } else if ctx.own_client_anywhere(ks) && ctx.known_asn(ks) {
        Severity::Low
    } else {
        Severity::Medium
    };
    ctx.emit(ks, out, DetectorId::R5, sev, |ks| Finding {
        explanation: format!(
            "Key {} spent ${cost:.2} this hour (usually ${:.2}) and made {calls:.0} calls to \
             one model. Spend far above the key's own history is the bill a reseller runs up.",
            ks.key,
            usual_h.max(usual_avg)
        ),
        features: vec![
            feat("usd_hour", cost, Some(thr_cost)),
            feat("model_calls_hour", calls, Some(thr_calls)),
        ],
        subjects: Vec::new(),
        evidence: Vec::new(),
    });
}

/// R6: the first image generation on a key with a history of none, an hour dominated by
/// images, a never-used model, or a model/endpoint mix far from the usual.
pub fn r6_mix(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if !ctx.o.inference {
        return;
    }
    let th = ctx.th();
    let min_history = u64::from(th.r6_min_history);
    let (images, history) = match ctx.reference {
        Reference::Learning => return,
        Reference::Key => (ks.base.images, ks.base.inference),
        Reference::Tenant => ctx
            .tenant
            .map_or((1, 0), |t| (t.images + ks.base.images, t.requests)),
    };
    let f = ks.factor(DetectorId::R6);
    // Once per hour: until the key's baseline learns images, every image is a "first".
    if ctx.o.image && images == 0 && history as f64 >= min_history as f64 * f {
        if ks.hour.images > 1 {
            return;
        }
        // Images starting from the key's own networks are the owner's new app (often with a
        // new SDK): low. A reseller's buyers arrive from elsewhere.
        let sev = if ctx.far(ks) {
            Severity::High
        } else if ctx.known_asn(ks) {
            Severity::Low
        } else {
            Severity::Medium
        };
        ctx.emit(ks, out, DetectorId::R6, sev, |ks| Finding {
            explanation: format!(
                "First image generation on key {} after {history} requests without one, from \
                 {}. Stolen keys are resold for image generation.",
                ks.key,
                ctx.source()
            ),
            features: vec![
                feat("images_baseline", images as f64, Some(0.0)),
                feat("history", history as f64, Some(min_history as f64)),
            ],
            subjects: vec![subj("endpoint", Endpoint::ImagesGenerations.as_str())],
            evidence: Vec::new(),
        });
        return;
    }
    if !matches!(ctx.reference, Reference::Key) || ks.base.inference < min_history {
        return;
    }
    let hour_inf = f64::from(ks.hour.inference);
    let base_share = ks.base.images as f64 / ks.base.inference.max(1) as f64;
    let hour_share = f64::from(ks.hour.images) / hour_inf.max(1.0);
    if ctx.o.image && ks.hour.images >= 10 && hour_share > 0.5 && base_share < 0.05 {
        ctx.emit(ks, out, DetectorId::R6, Severity::Medium, |ks| Finding {
            explanation: format!(
                "{:.0} % of this hour's calls on key {} are image generations; usually {:.1} %.",
                100.0 * hour_share,
                ks.key,
                100.0 * base_share
            ),
            features: vec![feat("image_share_hour", hour_share, Some(0.5))],
            subjects: Vec::new(),
            evidence: Vec::new(),
        });
        return;
    }
    if let Some(m) = ctx.o.model_h
        && !ks.base.knows_model(m)
        && ks.base.models.len() < 8
    {
        let model = ctx.e.model.clone().unwrap_or_default();
        ctx.emit(ks, out, DetectorId::R6, Severity::Low, |ks| Finding {
            explanation: format!(
                "Key {} called model {model:?}, which it has never used before.",
                ks.key
            ),
            features: vec![feat("new_model", 1.0, None)],
            subjects: vec![subj("model", model.clone())],
            evidence: Vec::new(),
        });
        return;
    }
    // The divergence is computed every 20th call of the hour: it costs a few hundred ns.
    if ks.hour.inference >= 20 && ks.hour.inference.is_multiple_of(20) {
        let p: Vec<f64> = ks.hour.endpoints.iter().map(|&n| f64::from(n)).collect();
        let q: Vec<f64> = ks.base.endpoints.iter().map(|&n| f64::from(n)).collect();
        let js = js_divergence(&p, &q);
        let thr = (th.r6_js_divergence * f).min(1.0);
        if js > thr {
            ctx.emit(ks, out, DetectorId::R6, Severity::Low, |ks| Finding {
                explanation: format!(
                    "The endpoint mix of key {} this hour diverges from its usual mix \
                     (Jensen-Shannon {js:.2}).",
                    ks.key
                ),
                features: vec![feat("js_divergence", js, Some(thr))],
                subjects: Vec::new(),
                evidence: Vec::new(),
            });
        }
    }
}
