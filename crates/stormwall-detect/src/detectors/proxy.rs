//! Proxy: P1 source dispersion, P2 impossible travel, P3 anonymising egress, P4 relay
//! artefacts, P5 user-agent drift, P6 one client address across tenants.

use stormwall_types::{Alert, DetectorId, Severity};

use super::{Ctx, Finding, feat, subj};
use crate::egress::EgressFlag;
use crate::features::{country_centroid, haversine_km};
use crate::state::{KeyState, NetState, Reference, has_flag};

/// P1: distinct ASNs or countries in the key's current hour well above its usual peak.
/// Called only when the event added a new ASN or country to the hour.
pub fn p1_dispersion(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    let th = ctx.th();
    let (peak_asn, peak_cc) = match ctx.reference {
        Reference::Learning => return,
        Reference::Key => (ks.base.peak_asns_h, ks.base.peak_countries_h),
        Reference::Tenant => ctx.tenant.map_or((0.0, 0.0), |t| {
            (
                t.peak_asns_h.max(ks.base.peak_asns_h),
                t.peak_countries_h.max(ks.base.peak_countries_h),
            )
        }),
    };
    let f = ks.factor(DetectorId::P1);
    let thr_asn = (f64::from(th.p1_asns_per_hour))
        .max((th.p1_baseline_factor * f64::from(peak_asn)).ceil())
        * f;
    let thr_cc = (f64::from(th.p1_countries_per_hour))
        .max((th.p1_baseline_factor * f64::from(peak_cc)).ceil())
        * f;
    let g = ctx.global;
    let asns = (ks.hour.asns.count() as u64).max(g.asns_hour.unwrap_or(0)) as f64;
    let ccs = (ks.hour.countries.count() as u64).max(g.countries_hour.unwrap_or(0)) as f64;
    if asns < thr_asn && ccs < thr_cc {
        return;
    }
    // The owner's own client in a second country (a developer abroad, a phone roaming)
    // is low; someone else's client spreading the key far is medium.
    let sev = if asns >= 2.0 * thr_asn || ccs >= 2.0 * thr_cc {
        Severity::High
    } else if ctx.own_client_anywhere(ks) || !ctx.far(ks) {
        // Or a person next door (a developer at home across the border from the cloud
        // region): one more place nearby is not a spread.
        Severity::Low
    } else {
        Severity::Medium
    };
    let nets = (ks.hour.nets.count() as u64).max(g.nets_hour.unwrap_or(0)) as f64;
    ctx.emit(ks, out, DetectorId::P1, sev, |ks| Finding {
        explanation: format!(
            "Key {} was used from {asns:.0} networks (ASNs) in {ccs:.0} countries and {nets:.0} \
             /24s within one hour; it usually peaks at {peak_asn:.0} ASNs and {peak_cc:.0} \
             countries. One key spread over many networks is what a shared relay or a key \
             shared among many people looks like.{}",
            ks.key,
            if g.asns_hour.is_some() {
                " Counts are over every gateway replica."
            } else {
                ""
            }
        ),
        features: vec![
            feat("distinct_asns_hour", asns, Some(thr_asn)),
            feat("distinct_countries_hour", ccs, Some(thr_cc)),
            feat("distinct_nets_hour", nets, None),
        ],
        subjects: ctx.source_subjects(),
        evidence: ks
            .hour
            .spread_evidence
            .iter()
            .map(|id| id.to_string())
            .collect(),
    });
}

/// P2: consecutive requests from countries too far apart for the time between them.
pub fn p2_travel(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    let o = ctx.o;
    let (Some(cc), Some(ch)) = (o.cc, o.country_h) else {
        return;
    };
    let prev = ks.last_place.replace((o.t, ch, o.asn, cc));
    let Some((t0, ch0, asn0, cc0)) = prev else {
        return;
    };
    if ch0 == ch || matches!(ctx.reference, Reference::Learning) {
        return;
    }
    // Same network in two countries is one provider's egress (VPN exits, cloud regions);
    // keys that are normally used from several countries at once are many users, not one
    // traveller.
    if asn0.is_some() && asn0 == o.asn || ks.base.peak_countries_h >= 2.0 {
        return;
    }
    let known = |h: u64| {
        ks.base.countries.contains(h)
            || matches!(ctx.reference, Reference::Tenant)
                && ctx.tenant.is_some_and(|t| t.countries.contains(h))
    };
    if known(ch) && known(ch0) {
        return;
    }
    let (Some(a), Some(b)) = (
        country_centroid(std::str::from_utf8(&cc0).unwrap_or("")),
        country_centroid(o.country()),
    ) else {
        return;
    };
    let km = haversine_km(a, b);
    let hours = ((o.t - t0).max(1) as f64) / 3600.0;
    let kmh = km / hours;
    let limit = ctx.th().p2_max_kmh * ks.factor(DetectorId::P2);
    if kmh <= limit {
        return;
    }
    let from = String::from_utf8_lossy(&cc0).into_owned();
    // The app in its cloud and its developer abroad are two places at once too: on its own,
    // with the key's own client family and no anonymising egress, that is low.
    // The key's own kind of egress (its cloud) is no evidence; a new client family is, from
    // far away (a developer's curl at home next door is not).
    let sev = if ctx.new_flag(ks) || !ctx.known_family(ks) && ctx.far(ks) {
        Severity::Medium
    } else {
        Severity::Low
    };
    ctx.emit(ks, out, DetectorId::P2, sev, |ks| Finding {
        explanation: format!(
            "Key {} was used from {from} and then from {} {:.0} s later: {km:.0} km apart, \
             {kmh:.0} km/h. No traveller moves that fast; two parties are using the key.",
            ks.key,
            o.country(),
            (o.t - t0) as f64
        ),
        features: vec![
            feat("speed_kmh", kmh, Some(limit)),
            feat("distance_km", km, None),
        ],
        subjects: {
            let mut s = ctx.source_subjects();
            s.push(subj("previous_country", from.clone()));
            s
        },
        evidence: Vec::new(),
    });
}

/// P3: traffic from hosting, VPN, Tor or proxy egress of a kind the key does not use.
pub fn p3_egress(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    let Some(flag) = ctx.o.flag else {
        return;
    };
    let sev = match ctx.reference {
        // With no history at all, only Tor is remarkable on its own.
        Reference::Learning if flag == EgressFlag::Tor => Severity::Low,
        Reference::Learning => return,
        _ if !has_flag(ctx.known_flags(ks), flag) => Severity::High,
        // A new network of a kind the key uses: the owner's own client moving (a new region,
        // a new VPN provider) is low; someone else's client there is medium.
        _ if !ctx.known_asn(ks) && ctx.own_client_anywhere(ks) => Severity::Low,
        _ if !ctx.known_asn(ks) => Severity::Medium,
        _ => return,
    };
    ctx.emit(ks, out, DetectorId::P3, sev, |ks| Finding {
        explanation: format!(
            "Key {} was used through {} egress from {}; {}. Stolen keys are tested and relayed \
             from rented servers, VPNs and Tor.",
            ks.key,
            flag.as_str(),
            ctx.source(),
            if sev == Severity::High {
                "this key has never been used from such a network"
            } else {
                "this key uses such networks, but not this one"
            }
        ),
        features: vec![feat(
            "new_egress_kind",
            f64::from(u8::from(sev == Severity::High)),
            None,
        )],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

/// P4: header-shape artefacts typical of relays and scripts. Two or more on one request
/// fire.
pub fn p4_artefacts(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    let e = ctx.e;
    let o = ctx.o;
    let mut found: Vec<&'static str> = Vec::new();
    if e.origin.as_deref() == Some("") || e.referer.as_deref() == Some("") {
        found.push("Origin or Referer present but empty");
    }
    // An owner whose own SDK requests never carried the companion headers (an old SDK, a
    // proxy of theirs that strips them) sends them so every day: no artefact on this key.
    if o.family.is_stainless_sdk() && !o.stainless && ks.base.sdk_bare == 0 {
        found.push("OpenAI SDK user agent without the SDK's x-stainless-* headers");
    }
    // Artefacts only relays and forged clients produce; the others (a new shape, curl on an
    // SDK key) are also a developer or an SDK change.
    let mut strong = !found.is_empty();
    let learning = matches!(ctx.reference, Reference::Learning);
    if !learning {
        if o.family.is_generic_http() && ks.base.sdk > 0 && ks.base.generic == 0 {
            found.push("generic HTTP library on a key used only through SDKs");
        }
        if ctx.known_shape(ks) == Some(false) {
            found.push("header shape never seen on this key");
        }
        if e.forwarded
            && matches!(ctx.reference, Reference::Key)
            && ks.base.forwarded == 0
            && ks.base.requests >= 50
        {
            found.push("forwarding headers on a key that never sends them");
            strong = true;
        }
        if let Some(v) = o.api_version_h
            && !ks.base.api_versions.is_empty()
            && !ks.base.api_versions.contains(v)
        {
            found.push("Azure api-version this key has never used");
        }
    }
    let need = f64::from(ctx.th().p4_min_artefacts) * ks.factor(DetectorId::P4);
    if (found.len() as f64) < need {
        return;
    }
    let sev = match (ctx.far(ks), strong) {
        (true, true) => Severity::High,
        (true, false) | (false, true) => Severity::Medium,
        (false, false) => Severity::Low,
    };
    let shape = o.shape;
    ctx.emit(ks, out, DetectorId::P4, sev, |ks| Finding {
        explanation: format!(
            "Request on key {} from {} carries relay artefacts: {}.",
            ks.key,
            ctx.source(),
            found.join("; ")
        ),
        features: vec![feat("artefacts", found.len() as f64, Some(need))],
        subjects: {
            let mut s = ctx.source_subjects();
            s.push(subj("header_shape", format!("{shape:016x}")));
            s
        },
        evidence: Vec::new(),
    });
}

/// P5: a user-agent family new to the key, or too many families in a day.
pub fn p5_ua_drift(ctx: &Ctx<'_>, ks: &mut KeyState, out: &mut Vec<Alert>) {
    if matches!(ctx.reference, Reference::Learning) {
        return;
    }
    let new_family = !ctx.known_family(ks);
    let per_day = ks.day.families.count() as f64;
    let thr = f64::from(ctx.th().p5_families_per_day)
        .max(f64::from(ks.base.peak_families_day) + 1.0)
        * ks.factor(DetectorId::P5);
    let too_many = per_day >= thr;
    if !new_family && !too_many {
        return;
    }
    // Many families in a day nearby are the owner's SDK switch, a new app on the key and its
    // developer's curl; from far away, the key is shared.
    let sev = if ctx.far(ks) {
        Severity::Medium
    } else {
        Severity::Low
    };
    let family = o_family(ctx);
    ctx.emit(ks, out, DetectorId::P5, sev, |ks| Finding {
        explanation: format!(
            "Key {} was used by a {family} client from {}{}; {per_day:.0} client families on \
             this key today.",
            ks.key,
            ctx.source(),
            if new_family {
                ", a client family never seen on this key"
            } else {
                ""
            }
        ),
        features: vec![
            feat("new_family", f64::from(u8::from(new_family)), None),
            feat("families_today", per_day, Some(thr)),
        ],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}

fn o_family(ctx: &Ctx<'_>) -> &'static str {
    ctx.o.family.as_str()
}

/// P6: one client — the same address *and* the same client program (user agent and header
/// shape) — uses keys of several tenants in a day: a relay's key pool. Keyed by the program
/// too, so a VPN exit or a carrier NAT shared by unrelated companies does not count.
pub fn p6_cross_tenant(
    ctx: &Ctx<'_>,
    ks: &mut KeyState,
    nets: &mut crate::engine::FastMap<u64, NetState>,
    max_networks: usize,
    out: &mut Vec<Alert>,
) {
    let Some(tenant) = ks.tenant.as_deref() else {
        return;
    };
    let day = ctx.o.t.div_euclid(86_400);
    let th = f64::from(ctx.th().p6_min_tenants) * ks.factor(DetectorId::P6);
    let len = nets.len();
    let id =
        crate::sketch::mix64(ctx.o.ip ^ ctx.o.ua_h.rotate_left(17) ^ ctx.o.shape.rotate_left(41));
    let ns = match nets.get_mut(&id) {
        Some(ns) => ns,
        None if len < max_networks => nets.entry(id).or_insert_with(|| NetState::new(day)),
        None => return,
    };
    if ns.day != day {
        *ns = NetState::new(day);
    }
    let new = ns.tenants.insert(crate::sketch::hash_str(tenant));
    let n = ns.tenants.count() as f64;
    if !new || n < th {
        return;
    }
    // Commercial VPN and Tor exits are shared by design: unrelated companies with the same
    // SDK meet there. Worth recording, not acting on.
    // A network the key itself uses is no relay's: a carrier NAT or an office line carries
    // several companies' apps with the same HTTP stack.
    let sev = match ctx.o.flag {
        Some(EgressFlag::Vpn | EgressFlag::Tor | EgressFlag::Proxy) => Severity::Low,
        _ if ks.base.asns.contains(ctx.o.asn_h) => Severity::Low,
        _ => Severity::High,
    };
    ctx.emit(ks, out, DetectorId::P6, sev, |ks| Finding {
        explanation: format!(
            "Client {} used keys of {n:.0} different tenants today, the latest being key {}. \
             One address rotating through several customers' keys is a relay's key pool.",
            ctx.e.source_ip, ks.key
        ),
        features: vec![feat("tenants_today", n, Some(th))],
        subjects: ctx.source_subjects(),
        evidence: Vec::new(),
    });
}
