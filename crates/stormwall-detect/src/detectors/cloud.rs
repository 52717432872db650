//! Control-plane detectors over cloud logs (DETECTIONS.md): E3 key listing or creation by a
//! new actor, E4 long-lived keys used for inference, V3 logging-posture reconnaissance, V5
//! model enablement through an access key (the LLMjacking preamble), V6 denied probing, X1
//! logging tamper, X2 safety-control tamper, X3 access loosening, X4 bearer-key misuse, P7
//! region fan-out — and H2 for a resource whose keys were read by a new actor and are then
//! used from a network they never used.
//!
//! They keep their own state per principal (a cloud credential) and per account, serialisable
//! so a daily batch resumes yesterday's knowledge. Pure: events in, alerts out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use stormwall_types::{
    Alert, AlertFeature, AlertSubject, CloudContext, ControlAction, ControlEvent, CredentialKind,
    DetectorId, Principal, Severity, UsageEvent,
};
use time::OffsetDateTime;

use super::{feat, subj};

/// Thresholds of the cloud detectors (starting points; DETECTIONS.md).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudThresholds {
    /// Days of logs during which actors and networks are learnt, not judged (E3, H2).
    pub learn_days: u32,
    /// Azure Audit `ListKey` records per actor per hour that are a bulk read (E3).
    pub e3_bulk_list_keys: u32,
    /// Hours after keys were read by a new actor in which their use from a new network is
    /// an H2 alert.
    pub h2_window_hours: u32,
    /// Days a long-lived-key posture finding (E4) is not repeated for a principal.
    pub e4_repeat_days: u32,
    /// Logging-configuration reads per principal per hour that make a checker (V3 high).
    pub v3_checker_reads: u32,
    /// Hours after a model-enablement call in which an invocation completes the preamble
    /// (V5 critical).
    pub v5_window_hours: u32,
    /// Share of the LLMjacking actions one identity used in 24 h (Prowler: 0.4).
    pub v5_action_share: f64,
    /// Denied invocations per principal and model per hour (V6 high).
    pub v6_denied_invokes: u32,
    /// Denied model listings per principal per hour (V6 high).
    pub v6_denied_listings: u32,
    /// Distinct regions one identity invokes in per hour (P7).
    pub p7_regions: u32,
    /// Seconds one detector's alert on one principal is not repeated (unless it escalates).
    pub cooldown_secs: u32,
}

impl Default for CloudThresholds {
    fn default() -> Self {
        Self {
            learn_days: 7,
            e3_bulk_list_keys: 100,
            h2_window_hours: 72,
            e4_repeat_days: 7,
            v3_checker_reads: 3,
            v5_window_hours: 24,
            v5_action_share: 0.4,
            v6_denied_invokes: 3,
            v6_denied_listings: 9,
            p7_regions: 3,
            cooldown_secs: 3600,
        }
    }
}

/// The LLMjacking actions of the Prowler check (14 API calls a thief uses on Bedrock).
pub const LLMJACKING_ACTIONS: [&str; 14] = [
    "PutUseCaseForModelAccess",
    "PutFoundationModelEntitlement",
    "ListFoundationModels",
    "GetFoundationModelAvailability",
    "ListFoundationModelAgreementOffers",
    "CreateFoundationModelAgreement",
    "GetModelInvocationLoggingConfiguration",
    "GetUseCaseForModelAccess",
    "ListProvisionedModelThroughputs",
    "ListModelCustomizationJobs",
    "ListCustomModels",
    "InvokeModel",
    "InvokeModelWithResponseStream",
    "GetFoundationModel",
];

/// What is remembered about one principal.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PrincipalState {
    /// First event time.
    pub first: i64,
    /// Has made administrative writes (logging, guardrails, deployments) or used the console.
    pub admin: bool,
    /// /24 (or /48) networks seen, capped.
    pub nets: BTreeSet<u64>,
    /// Last E4 finding.
    pub e4_at: Option<i64>,
    /// Recent logging-configuration reads.
    pub v3_reads: VecDeque<i64>,
    /// Last model-enablement call (V5) and its operation.
    pub enabled_at: Option<(i64, String)>,
    /// LLMjacking actions used, with their last time.
    pub llmjacking: HashMap<String, i64>,
    /// Recent denied invocations (time, model hash).
    pub denied: VecDeque<(i64, u64)>,
    /// Recent denied listings.
    pub denied_listings: VecDeque<i64>,
    /// Recent invocation regions.
    pub regions: VecDeque<(i64, String)>,
    /// Keys readable by this principal were read by a new actor at this time (arms H2).
    pub exposed_at: Option<i64>,
    /// Last alert per detector (time, severity), for the cooldown.
    pub last_alert: HashMap<String, (i64, Severity)>,
}

/// What is remembered about one account (subscription, AWS account, organisation, project).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AccountState {
    /// Actors that have read or created keys before.
    pub key_actors: BTreeSet<String>,
}

/// The detectors' whole state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CloudState {
    /// Earliest event time seen (the start of learning).
    pub first: Option<i64>,
    /// Per principal, by [`Principal::label`]. Looked up several times per event by labels
    /// of up to a few hundred bytes: a fast (randomly seeded) hash instead of SipHash.
    pub principals: HashMap<String, PrincipalState, foldhash::fast::RandomState>,
    /// Per account.
    pub accounts: HashMap<String, AccountState>,
}

/// Most networks remembered per principal.
const MAX_NETS: usize = 256;

/// The cloud detectors.
#[derive(Debug, Clone, Default)]
pub struct CloudDetectors {
    th: CloudThresholds,
    disabled: Vec<DetectorId>,
    state: CloudState,
    points: [f64; 5],
    /// The event's principal label, written into one buffer per event instead of a new
    /// string.
    label: String,
}

/// A network id for an address: its /24 (IPv4) or /48 (IPv6), as masked logs allow.
fn net_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => {
            let o = v4.octets();
            Some(u64::from(u32::from_be_bytes([o[0], o[1], o[2], 0])))
        }
        IpAddr::V6(v6) if !v6.is_unspecified() => {
            let s = v6.segments();
            Some((1 << 63) | u64::from(s[0]) << 32 | u64::from(s[1]) << 16 | u64::from(s[2]))
        }
        _ => None,
    }
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Whether a user agent is the provider's console (not an access key in a script).
fn console_agent(ua: Option<&str>) -> bool {
    // Once per event: the agent lower-cased on the stack (ASCII, as the needles are) and
    // searched with finders built once — the same answer as a case-insensitive scan of
    // every window, at a fraction of the cost.
    static F: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
        std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b"console.amazon"),
                memchr::memmem::Finder::new(b"aws-internal"),
            ]
        });
    ua.is_some_and(|u| {
        if u.eq_ignore_ascii_case("aws internal") {
            return true;
        }
        let mut stack = [0u8; 512];
        let heap;
        let lower: &[u8] = match stack.get_mut(..u.len()) {
            Some(buf) => {
                buf.copy_from_slice(u.as_bytes());
                buf.make_ascii_lowercase();
                buf
            }
            None => {
                heap = u.to_ascii_lowercase();
                heap.as_bytes()
            }
        };
        F.iter().any(|f| f.find(lower).is_some())
    })
}

/// One event as the detectors see it.
struct Seen<'a> {
    /// The principal's label, computed once per event.
    label: &'a str,
    t: i64,
    id: &'a str,
    at: OffsetDateTime,
    ip: Option<IpAddr>,
    ua: Option<&'a str>,
    /// Whether the user agent is the provider's console ([`console_agent`]), worked out
    /// once per event.
    console: bool,
    cloud: &'a CloudContext,
}

impl CloudDetectors {
    /// Detectors with thresholds, the switched-off list and points per severity.
    pub fn new(th: CloudThresholds, disabled: Vec<DetectorId>, points: [f64; 5]) -> Self {
        Self {
            th,
            disabled,
            state: CloudState::default(),
            points,
            label: String::new(),
        }
    }

    /// The state, to save.
    pub fn state(&self) -> &CloudState {
        &self.state
    }

    /// Replaces the state (a resumed batch).
    pub fn restore(&mut self, state: CloudState) {
        self.state = state;
    }

    fn learning(&self, t: i64) -> bool {
        self.state
            .first
            .is_none_or(|f| t - f < i64::from(self.th.learn_days) * 86_400)
    }

    fn begin(&mut self, s: &Seen<'_>, label: &str) {
        if self.state.first.is_none_or(|f| s.t < f) {
            self.state.first = Some(s.t);
        }
        if !self.state.principals.contains_key(label) {
            self.state.principals.insert(
                label.to_owned(),
                PrincipalState {
                    first: s.t,
                    ..PrincipalState::default()
                },
            );
        }
        if s.console
            && let Some(p) = self.state.principals.get_mut(label)
        {
            p.admin = true;
        }
    }

    /// Whether the principal's network is new to it (and remembers it). Masked and missing
    /// addresses count by their /24; a missing one is never new.
    fn new_net(&mut self, label: &str, ip: Option<IpAddr>) -> bool {
        let Some(net) = ip.and_then(net_of) else {
            return false;
        };
        let Some(p) = self.state.principals.get_mut(label) else {
            return false;
        };
        if p.nets.contains(&net) {
            return false;
        }
        if p.nets.len() < MAX_NETS {
            p.nets.insert(net);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        out: &mut Vec<Alert>,
        s: &Seen<'_>,
        principal: &Principal,
        d: DetectorId,
        sev: Severity,
        explanation: String,
        features: Vec<AlertFeature>,
        mut subjects: Vec<AlertSubject>,
    ) {
        if self.disabled.contains(&d) {
            return;
        }
        let label = principal.label();
        let cooldown = i64::from(self.th.cooldown_secs);
        let p = self
            .state
            .principals
            .entry(label.clone())
            .or_insert_with(|| PrincipalState {
                first: s.t,
                ..PrincipalState::default()
            });
        if let Some(&(at, prev)) = p.last_alert.get(d.as_str())
            && s.t - at < cooldown
            && sev <= prev
        {
            return;
        }
        p.last_alert.insert(d.as_str().to_owned(), (s.t, sev));
        subjects.insert(0, subj("principal", label));
        subjects.insert(1, subj("credential_kind", principal.kind.as_str()));
        subjects.push(subj("operation", s.cloud.operation.clone()));
        if let Some(ip) = s.ip {
            subjects.push(subj("ip", ip.to_string()));
        }
        let key = principal.key_id();
        out.push(Alert {
            id: format!("{}-{}-{}", s.id, d.as_str(), key.as_str()),
            detector: d,
            stage: d.stage(),
            severity: sev,
            at: s.at,
            key_id: Some(key),
            tenant: principal.account.clone(),
            source_ip: s.ip,
            features,
            subjects,
            explanation,
            evidence: vec![s.id.to_owned()],
            score: self.points[sev as usize],
        });
    }

    /// Observes a data-plane event from a cloud log (gateway events are ignored).
    pub fn observe_usage(&mut self, e: &UsageEvent, out: &mut Vec<Alert>) {
        let Some(cloud) = e.cloud.as_deref() else {
            return;
        };
        let ip = (!cloud.ip_missing).then_some(e.source_ip);
        let mut label = std::mem::take(&mut self.label);
        cloud.principal.write_label(&mut label);
        let s = Seen {
            label: &label,
            t: unix(e.timestamp),
            id: &e.id,
            at: e.timestamp,
            ip,
            ua: e.user_agent.as_deref(),
            console: console_agent(e.user_agent.as_deref()),
            cloud,
        };
        self.begin(&s, &label);
        let principal = &cloud.principal;
        let new_net = self.new_net(&label, ip);
        let listing = e.endpoint == Some(stormwall_types::Endpoint::Models);
        let invocation = !listing && e.endpoint.is_some();
        let denied = matches!(e.status, 401 | 403);
        self.note_llmjacking(&s, &label);
        if invocation && !denied {
            self.e4(&s, principal, out);
            self.h2(&s, principal, new_net, out);
            self.v5_then_invoke(&s, principal, out);
            self.p7(&s, principal, out);
        }
        if denied {
            let model = e.model.as_deref().map_or(0, crate::sketch::hash_str);
            self.v6(&s, principal, listing, model, out);
        }
        self.v5_share(&s, principal, out);
        self.label = label;
    }

    /// Observes a management event.
    pub fn observe_control(&mut self, c: &ControlEvent, out: &mut Vec<Alert>) {
        let mut label = std::mem::take(&mut self.label);
        c.cloud.principal.write_label(&mut label);
        let s = Seen {
            label: &label,
            t: unix(c.timestamp),
            id: &c.id,
            at: c.timestamp,
            ip: c.source_ip,
            ua: c.user_agent.as_deref(),
            console: console_agent(c.user_agent.as_deref()),
            cloud: &c.cloud,
        };
        let principal = &c.cloud.principal;
        self.begin(&s, &label);
        let new_net = self.new_net(&label, c.source_ip);
        self.note_llmjacking(&s, &label);
        use ControlAction as A;
        // Judged first, learnt after: a principal's first logging change is not its own
        // licence.
        let administers = c.success
            && matches!(
                c.action,
                A::PutLoggingConfig | A::GuardrailCreate | A::DeploymentWrite
            )
            && !c.loosens;
        match c.action {
            A::ListKeys | A::RegenerateKey | A::CreateKey | A::UpdateKey => {
                self.e3(c, &s, new_net, out);
            }
            A::GetLoggingConfig => self.v3(&s, principal, out),
            A::ModelUseCase | A::ModelAgreement | A::ModelEntitlement | A::ListAgreementOffers => {
                self.v5(c, &s, out);
            }
            A::DeleteLogging | A::PutLoggingConfig => self.x1(c, &s, out),
            A::GuardrailDelete | A::GuardrailUpdate => self.x2(c, &s, out),
            A::NetworkChange | A::LocalAuthChange => self.x3(c, &s, out),
            _ => {}
        }
        self.x4(c, &s, out);
        self.v5_share(&s, principal, out);
        if administers && let Some(p) = self.state.principals.get_mut(&label) {
            p.admin = true;
        }
        self.label = label;
    }

    fn note_llmjacking(&mut self, s: &Seen<'_>, label: &str) {
        if s.cloud.principal.provider != stormwall_types::CloudProvider::Aws {
            return;
        }
        let op = s.cloud.operation.as_str();
        if LLMJACKING_ACTIONS.contains(&op)
            && let Some(p) = self.state.principals.get_mut(label)
        {
            match p.llmjacking.get_mut(op) {
                Some(t) => *t = s.t,
                None => {
                    p.llmjacking.insert(op.to_owned(), s.t);
                }
            }
        }
    }

    /// E3: resource keys read, or a credential created, by an actor the account has not
    /// seen do it (after the learning days); bulk Audit `ListKey`; OpenAI keys created with
    /// every scope.
    fn e3(&mut self, c: &ControlEvent, s: &Seen<'_>, new_net: bool, out: &mut Vec<Alert>) {
        if !c.success {
            return;
        }
        let principal = &c.cloud.principal;
        let label = s.label;
        let account = principal.account.clone().unwrap_or_default();
        let learning = self.learning(s.t);
        let acc = self.state.accounts.entry(account).or_default();
        let new_actor = acc.key_actors.insert(label.to_owned());
        let broad = c
            .scopes
            .iter()
            .any(|x| x == "all" || x == "*" || x.ends_with(":write") || x == "api.model.request");
        let bulk = c.count >= self.th.e3_bulk_list_keys
            || c.response_bytes.is_some_and(|b| b >= 1_000_000);
        let sev = if bulk {
            Severity::High
        } else if learning {
            return;
        } else if new_actor {
            Severity::High
        } else if new_net && (broad || c.action == ControlAction::ListKeys) {
            Severity::Medium
        } else {
            return;
        };
        let verb = match c.action {
            ControlAction::ListKeys => "read the keys of",
            ControlAction::RegenerateKey => "regenerated a key of",
            ControlAction::CreateKey => "created a credential on",
            _ => "changed a credential on",
        };
        let what = c
            .cloud
            .resource
            .clone()
            .or_else(|| c.target.clone())
            .unwrap_or_else(|| "the account".into());
        let explanation = format!(
            "{} {verb} {what} ({}){}{}. {}",
            principal.label(),
            c.cloud.operation,
            if new_actor {
                ", an actor never seen managing keys in this account"
            } else {
                " from a network it has not used"
            },
            if broad { ", with every scope" } else { "" },
            "Whoever reads or creates keys can use them from anywhere: confirm the actor."
        );
        let mut subjects = Vec::new();
        if let Some(tg) = &c.target {
            subjects.push(subj("target", tg.clone()));
        }
        self.emit(
            out,
            s,
            principal,
            DetectorId::E3,
            sev,
            explanation.clone(),
            vec![
                feat("new_actor", f64::from(u8::from(new_actor)), Some(1.0)),
                feat(
                    "records",
                    f64::from(c.count),
                    Some(f64::from(self.th.e3_bulk_list_keys)),
                ),
            ],
            subjects,
        );
        if sev < Severity::High {
            return;
        }
        // The credential read or created is exposed too: alert on it, and arm H2 for it.
        let exposed = match (c.action, c.cloud.principal.provider) {
            (ControlAction::ListKeys | ControlAction::RegenerateKey, _) => {
                c.cloud.resource.as_deref().map(|r| Principal {
                    provider: principal.provider,
                    kind: CredentialKind::AzureResourceKey,
                    id: format!("{}#key", r.to_ascii_lowercase()),
                    account: principal.account.clone(),
                    name: None,
                })
            }
            (ControlAction::CreateKey, stormwall_types::CloudProvider::Openai) => {
                c.target.as_deref().map(|k| Principal {
                    provider: principal.provider,
                    kind: CredentialKind::OpenaiApiKey,
                    id: k.to_owned(),
                    account: None,
                    name: None,
                })
            }
            (ControlAction::CreateKey, _) => c.target.as_deref().map(|u| Principal {
                provider: principal.provider,
                kind: CredentialKind::AwsPrincipal,
                id: format!("user:{u}"),
                account: principal.account.clone(),
                name: Some(u.to_owned()),
            }),
            _ => None,
        };
        if let Some(x) = exposed {
            let p = self
                .state
                .principals
                .entry(x.label())
                .or_insert_with(|| PrincipalState {
                    first: s.t,
                    ..PrincipalState::default()
                });
            p.exposed_at = Some(s.t);
            self.emit(
                out,
                s,
                &x,
                DetectorId::E3,
                Severity::High,
                format!(
                    "{} was exposed: {explanation} Any use of it from a new network in the next \
                     {} h is treated as the exposure being exploited.",
                    x.label(),
                    self.th.h2_window_hours
                ),
                vec![feat("exposed_by_new_actor", 1.0, Some(1.0))],
                vec![subj("actor", principal.label())],
            );
        }
    }

    /// H2: a credential whose keys were read or created by a new actor is used from a
    /// network it has never used.
    fn h2(&mut self, s: &Seen<'_>, principal: &Principal, new_net: bool, out: &mut Vec<Alert>) {
        let label = s.label;
        let Some(exposed) = self.state.principals.get(label).and_then(|p| p.exposed_at) else {
            return;
        };
        let window = i64::from(self.th.h2_window_hours) * 3600;
        if !new_net || s.t < exposed || s.t - exposed > window {
            return;
        }
        let hours = (s.t - exposed) as f64 / 3600.0;
        self.emit(
            out,
            s,
            principal,
            DetectorId::H2,
            Severity::High,
            format!(
                "{label} was exposed {hours:.1} h ago (its keys read or created by a new actor) \
                 and is now used from a network it has never used{}.",
                if s.cloud.ip_masked {
                    " (a /24: the log masks the last octet)"
                } else {
                    ""
                }
            ),
            vec![feat(
                "hours_since_exposure",
                hours,
                Some(f64::from(self.th.h2_window_hours)),
            )],
            Vec::new(),
        );
    }

    /// E4: a long-lived credential used for inference — a posture finding, low.
    fn e4(&mut self, s: &Seen<'_>, principal: &Principal, out: &mut Vec<Alert>) {
        if !principal.kind.long_lived() {
            return;
        }
        let label = s.label;
        let repeat = i64::from(self.th.e4_repeat_days) * 86_400;
        if let Some(p) = self.state.principals.get_mut(label) {
            if p.e4_at.is_some_and(|at| s.t - at < repeat) {
                return;
            }
            p.e4_at = Some(s.t);
        }
        self.emit(
            out,
            s,
            principal,
            DetectorId::E4,
            Severity::Low,
            format!(
                "{label} is a long-lived credential ({}) used for inference. Long-lived keys \
                 are what leaks; prefer short-lived roles or identities.",
                principal.kind.as_str()
            ),
            vec![feat("long_lived", 1.0, None)],
            Vec::new(),
        );
    }

    /// V3: the invocation-logging configuration read by a principal that does not
    /// administer it; repeated reads at a steady pace are a key checker.
    fn v3(&mut self, s: &Seen<'_>, principal: &Principal, out: &mut Vec<Alert>) {
        let label = s.label;
        let th = self.th.v3_checker_reads;
        let Some(p) = self.state.principals.get_mut(label) else {
            return;
        };
        if p.admin || s.console {
            return;
        }
        p.v3_reads.push_back(s.t);
        while p.v3_reads.front().is_some_and(|&x| s.t - x > 3600) || p.v3_reads.len() > 32 {
            p.v3_reads.pop_front();
        }
        let reads = p.v3_reads.len() as u32;
        let preamble = p.enabled_at.is_some() || p.llmjacking.len() >= 3;
        let sev = if reads >= th || preamble || principal.kind == CredentialKind::AwsLongTermKey {
            Severity::High
        } else {
            Severity::Medium
        };
        self.emit(
            out,
            s,
            principal,
            DetectorId::V3,
            sev,
            format!(
                "{label} read the model-invocation logging configuration ({reads} time(s) in the \
                 last hour) without administering it: thieves check whether their prompts will \
                 be logged before using a key."
            ),
            vec![feat("reads_hour", f64::from(reads), Some(f64::from(th)))],
            Vec::new(),
        );
    }

    /// V5: model access enabled with an access key — use-case form, agreement, entitlement.
    fn v5(&mut self, c: &ControlEvent, s: &Seen<'_>, out: &mut Vec<Alert>) {
        let principal = &c.cloud.principal;
        let label = s.label;
        let console = s.console;
        if let Some(p) = self.state.principals.get_mut(label)
            && c.action != ControlAction::ListAgreementOffers
        {
            p.enabled_at = Some((s.t, c.cloud.operation.clone()));
        }
        if console {
            return;
        }
        let sev = if c.action == ControlAction::ListAgreementOffers {
            Severity::Medium
        } else {
            Severity::High
        };
        self.emit(
            out,
            s,
            principal,
            DetectorId::V5,
            sev,
            format!(
                "{label} called {} through {} ({}): enabling model access is a console task; \
                 from a key it is the LLMjacking preamble.",
                c.cloud.operation,
                principal.kind.as_str(),
                s.ua.unwrap_or("no user agent")
            ),
            vec![feat("console", 0.0, None)],
            Vec::new(),
        );
    }

    /// V5 (continued): an invocation after the preamble completes it — critical.
    fn v5_then_invoke(&mut self, s: &Seen<'_>, principal: &Principal, out: &mut Vec<Alert>) {
        let label = s.label;
        let window = i64::from(self.th.v5_window_hours) * 3600;
        let Some((at, op)) = self
            .state
            .principals
            .get(label)
            .and_then(|p| p.enabled_at.clone())
        else {
            return;
        };
        if s.t < at || s.t - at > window || s.console {
            return;
        }
        let mins = (s.t - at) as f64 / 60.0;
        self.emit(
            out,
            s,
            principal,
            DetectorId::V5,
            Severity::Critical,
            format!(
                "{label} invoked a model {mins:.0} min after enabling model access ({op}) with \
                 the same credential: the LLMjacking preamble followed by use."
            ),
            vec![feat(
                "minutes_after_enablement",
                mins,
                Some(window as f64 / 60.0),
            )],
            Vec::new(),
        );
    }

    /// V5 (Prowler): one identity used a large share of the LLMjacking actions in 24 h.
    fn v5_share(&mut self, s: &Seen<'_>, principal: &Principal, out: &mut Vec<Alert>) {
        let label = s.label;
        let Some(p) = self.state.principals.get_mut(label) else {
            return;
        };
        if p.llmjacking.len() < 2 {
            return;
        }
        p.llmjacking.retain(|_, &mut t| s.t - t <= 86_400);
        let share = p.llmjacking.len() as f64 / LLMJACKING_ACTIONS.len() as f64;
        if share < self.th.v5_action_share || p.admin {
            return;
        }
        let n = p.llmjacking.len();
        self.emit(
            out,
            s,
            principal,
            DetectorId::V5,
            Severity::High,
            format!(
                "{label} used {n} of the {} LLMjacking actions in 24 h ({:.0}%).",
                LLMJACKING_ACTIONS.len(),
                share * 100.0
            ),
            vec![feat(
                "llmjacking_share",
                share,
                Some(self.th.v5_action_share),
            )],
            Vec::new(),
        );
    }

    /// V6: denied invocations or listings.
    fn v6(
        &mut self,
        s: &Seen<'_>,
        principal: &Principal,
        listing: bool,
        model: u64,
        out: &mut Vec<Alert>,
    ) {
        let label = s.label;
        let (inv_th, list_th) = (self.th.v6_denied_invokes, self.th.v6_denied_listings);
        let Some(p) = self.state.principals.get_mut(label) else {
            return;
        };
        let (count, th) = if listing {
            p.denied_listings.push_back(s.t);
            while p.denied_listings.front().is_some_and(|&x| s.t - x > 3600)
                || p.denied_listings.len() > 64
            {
                p.denied_listings.pop_front();
            }
            (p.denied_listings.len() as u32, list_th)
        } else {
            p.denied.push_back((s.t, model));
            while p.denied.front().is_some_and(|&(x, _)| s.t - x > 3600) || p.denied.len() > 64 {
                p.denied.pop_front();
            }
            let same = p.denied.iter().filter(|(_, m)| *m == model).count() as u32;
            let models: BTreeSet<u64> = p.denied.iter().map(|(_, m)| *m).collect();
            // Denied on many models is probing as much as many denials on one.
            (same.max(models.len() as u32), inv_th)
        };
        let sev = if count > th {
            Severity::High
        } else if listing {
            return;
        } else {
            Severity::Low
        };
        self.emit(
            out,
            s,
            principal,
            DetectorId::V6,
            sev,
            format!(
                "{label} was denied {} {count} time(s) in the last hour ({}): probing what a \
                 credential may do.",
                if listing {
                    "listing models"
                } else {
                    "invoking models"
                },
                s.cloud.error.as_deref().unwrap_or("denied")
            ),
            vec![feat("denied_hour", f64::from(count), Some(f64::from(th)))],
            Vec::new(),
        );
    }

    /// X1: invocation logging or diagnostic settings deleted (high) or changed (medium).
    fn x1(&mut self, c: &ControlEvent, s: &Seen<'_>, out: &mut Vec<Alert>) {
        if !c.success {
            return;
        }
        let principal = &c.cloud.principal;
        let delete = c.action == ControlAction::DeleteLogging;
        let sev = if delete || c.loosens {
            Severity::High
        } else if self
            .state
            .principals
            .get(&principal.label())
            .is_some_and(|p| p.admin && !self.learning(s.t))
        {
            return;
        } else {
            Severity::Low
        };
        self.emit(
            out,
            s,
            principal,
            DetectorId::X1,
            sev,
            format!(
                "{} {} logging ({}): whoever misuses a key first stops the record of it.",
                principal.label(),
                if delete { "deleted" } else { "changed" },
                c.cloud.operation
            ),
            vec![feat("deleted", f64::from(u8::from(delete)), None)],
            Vec::new(),
        );
    }

    /// X2: a guardrail or content-filter policy deleted or weakened.
    fn x2(&mut self, c: &ControlEvent, s: &Seen<'_>, out: &mut Vec<Alert>) {
        if !c.success {
            return;
        }
        let principal = &c.cloud.principal;
        let delete = c.action == ControlAction::GuardrailDelete;
        let sev = if delete || c.loosens {
            Severity::High
        } else {
            Severity::Low
        };
        self.emit(
            out,
            s,
            principal,
            DetectorId::X2,
            sev,
            format!(
                "{} {} a safety control ({}){}.",
                principal.label(),
                if delete { "deleted" } else { "changed" },
                c.cloud.operation,
                if c.loosens {
                    ", switching filtering off"
                } else {
                    ""
                }
            ),
            vec![feat(
                "weakened",
                f64::from(u8::from(delete || c.loosens)),
                None,
            )],
            Vec::new(),
        );
    }

    /// X3: network access or key authentication loosened.
    fn x3(&mut self, c: &ControlEvent, s: &Seen<'_>, out: &mut Vec<Alert>) {
        if !c.success || !c.loosens {
            return;
        }
        let principal = &c.cloud.principal;
        self.emit(
            out,
            s,
            principal,
            DetectorId::X3,
            Severity::High,
            format!(
                "{} loosened access ({}): public network access, an allow-all network rule, key \
                 authentication re-enabled or an IP allowlist removed opens the resource to \
                 stolen keys.",
                principal.label(),
                c.cloud.operation
            ),
            vec![feat("loosened", 1.0, None)],
            Vec::new(),
        );
    }

    /// X4: a bearer API key deleting or touching logging, or a `BedrockAPIKey-*` identity
    /// acting outside Bedrock.
    fn x4(&mut self, c: &ControlEvent, s: &Seen<'_>, out: &mut Vec<Alert>) {
        let principal = &c.cloud.principal;
        let op = c.cloud.operation.as_str();
        let destructive = op.starts_with("Delete")
            || op.contains("LoggingConfiguration")
            || op.starts_with("Update")
            || op.starts_with("Put");
        let outside = principal.kind == CredentialKind::AwsBedrockApiKey
            && c.service
                .as_deref()
                .is_some_and(|svc| svc != "bedrock.amazonaws.com" && svc != "sts.amazonaws.com");
        if !(c.cloud.bearer && destructive || outside) {
            return;
        }
        self.emit(
            out,
            s,
            principal,
            DetectorId::X4,
            Severity::High,
            format!(
                "{} {} ({} on {}): a Bedrock API key is for inference only.",
                principal.label(),
                if outside {
                    "acted outside Bedrock"
                } else {
                    "made a destructive call with a bearer API key"
                },
                op,
                c.service.as_deref().unwrap_or("?")
            ),
            vec![feat("bearer", f64::from(u8::from(c.cloud.bearer)), None)],
            Vec::new(),
        );
    }

    /// P7: one identity invoking in many regions within an hour.
    fn p7(&mut self, s: &Seen<'_>, principal: &Principal, out: &mut Vec<Alert>) {
        let Some(region) = s.cloud.region.as_deref() else {
            return;
        };
        let label = s.label;
        let th = self.th.p7_regions;
        let Some(p) = self.state.principals.get_mut(label) else {
            return;
        };
        p.regions.retain(|(t, _)| s.t - *t <= 3600);
        match p.regions.iter_mut().find(|(_, r)| r == region) {
            Some(slot) => slot.0 = s.t,
            None => {
                if p.regions.len() >= 32 {
                    p.regions.pop_front();
                }
                p.regions.push_back((s.t, region.to_owned()));
            }
        }
        let n = p.regions.len() as u32;
        if n < th {
            return;
        }
        let list: Vec<String> = p.regions.iter().map(|(_, r)| r.clone()).collect();
        self.emit(
            out,
            s,
            principal,
            DetectorId::P7,
            Severity::High,
            format!(
                "{label} invoked models in {n} regions within an hour ({}): resellers spread a \
                 stolen identity over every region's quota.",
                list.join(", ")
            ),
            vec![feat("regions_hour", f64::from(n), Some(f64::from(th)))],
            list.into_iter().map(|r| subj("region", r)).collect(),
        );
    }
}

/// What an operator would run to stop a cloud principal (Stormwall holds no cloud
/// credentials, so a response is a recommendation, never an effect).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recommendation {
    /// The principal, as `provider:id`.
    pub principal: String,
    /// The exact command.
    pub command: String,
    /// What the command does and what to check first.
    pub note: String,
}

/// The revocation command for a principal (`resource`: the resource the event touched;
/// `at`: the alert's time, before which a role's sessions are revoked).
pub fn recommend(p: &Principal, resource: Option<&str>, at: OffsetDateTime) -> Recommendation {
    use CredentialKind as K;
    let user_of = |arn: Option<&str>| {
        arn.and_then(|a| a.rsplit('/').next())
            .unwrap_or("USER")
            .to_owned()
    };
    let (command, note) = match p.kind {
        K::AwsLongTermKey => (
            format!(
                "aws iam update-access-key --user-name {} --access-key-id {} --status Inactive",
                user_of(p.name.as_deref()),
                p.id
            ),
            "Deactivates the access key (reversible); delete it once its owners have a new one.".to_owned(),
        ),
        K::AwsSessionKey => {
            let role = p
                .name
                .as_deref()
                .and_then(|a| a.split(":role/").nth(1).or_else(|| a.split("assumed-role/").nth(1)))
                .and_then(|r| r.split('/').next())
                .unwrap_or("ROLE")
                .to_owned();
            (
                format!(
                    "aws iam put-role-policy --role-name {role} --policy-name AWSRevokeOlderSessions \
                     --policy-document '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Deny\",\"Action\":\"*\",\"Resource\":\"*\",\"Condition\":{{\"DateLessThan\":{{\"aws:TokenIssueTime\":\"{}\"}}}}}}]}}'",
                    stormwall_types::timefmt::format(at)
                ),
                "Revokes every session of the role issued before now; then find how the role was assumed.".to_owned(),
            )
        }
        K::AwsBedrockApiKey => (
            format!(
                "aws iam update-service-specific-credential --user-name {} --service-specific-credential-id CREDENTIAL_ID --status Inactive",
                user_of(p.name.as_deref().or(Some(&p.id)))
            ),
            "Deactivates the Bedrock API key (list ids with `aws iam list-service-specific-credentials --service-name bedrock.amazonaws.com`).".to_owned(),
        ),
        K::AwsPrincipal => (
            format!(
                "aws iam list-access-keys --user-name {}   # then: aws iam update-access-key --access-key-id ID --status Inactive",
                user_of(p.name.as_deref().or(Some(&p.id)))
            ),
            "The log names no access key: list the identity's keys and deactivate them.".to_owned(),
        ),
        K::AzureResourceKey => {
            let r = resource.unwrap_or(&p.id);
            let account = azure_part(r, "accounts").unwrap_or_else(|| "ACCOUNT".into());
            let group = azure_part(r, "resourcegroups").unwrap_or_else(|| "RESOURCE_GROUP".into());
            (
                format!(
                    "az cognitiveservices account keys regenerate --name {account} --resource-group {group} --key-name Key1 && az cognitiveservices account keys regenerate --name {account} --resource-group {group} --key-name Key2"
                ),
                "Azure logs cannot tell key1 from key2: regenerate both (roll clients to the new key between the two).".to_owned(),
            )
        }
        K::AzureEntraIdentity => (
            format!(
                "az role assignment delete --assignee {} --scope {}",
                p.id.trim_start_matches("oid:"),
                resource.map_or_else(|| "/subscriptions/SUBSCRIPTION".to_owned(), account_scope)
            ),
            "Removes the identity's access to the resource; also revoke its sessions (`az ad user revoke-sign-in-sessions` / reset the app's credentials).".to_owned(),
        ),
        K::AzureApimSubscription => (
            format!(
                "az apim subscription regenerate-key  # APIM subscription {}: or suspend it with az rest --method patch (properties.state=suspended)",
                p.name.as_deref().unwrap_or(&p.id)
            ),
            "Regenerate or suspend the API Management subscription key.".to_owned(),
        ),
        K::OpenaiApiKey => (
            format!(
                "curl -X DELETE https://api.openai.com/v1/organization/projects/{}/api_keys/{} -H \"Authorization: Bearer $OPENAI_ADMIN_KEY\"",
                p.account.as_deref().unwrap_or("PROJECT_ID"),
                p.id
            ),
            "Deletes the project API key (an admin key is needed).".to_owned(),
        ),
        K::OpenaiSession => (
            format!(
                "curl -X DELETE https://api.openai.com/v1/organization/users/{} -H \"Authorization: Bearer $OPENAI_ADMIN_KEY\"",
                p.id
            ),
            "Removes the user from the organisation; or reset their password and sessions first if they are one of yours.".to_owned(),
        ),
        K::GcpServiceAccountKey => {
            let (sa, key) = p.id.split_once("/keys/").unwrap_or((&p.id, "KEY_ID"));
            (
                format!("gcloud iam service-accounts keys disable {key} --iam-account {sa}"),
                "Disables the service-account key (reversible); delete it once the workload has a new one.".to_owned(),
            )
        }
        K::GcpPrincipal => (
            format!("gcloud iam service-accounts disable {}", p.id),
            "Disables the service account (for a user: remove its IAM bindings on the project).".to_owned(),
        ),
    };
    Recommendation {
        principal: p.label(),
        command,
        note,
    }
}

/// The account-level scope of an Azure resource id (a deployment's or policy's resource id
/// cut after `accounts/<name>`).
fn account_scope(resource: &str) -> String {
    let lower = resource.to_ascii_lowercase();
    match lower.find("/accounts/") {
        Some(i) => {
            let after = i + "/accounts/".len();
            let end = resource
                .get(after..)
                .and_then(|r| r.find('/'))
                .map_or(resource.len(), |j| after + j);
            resource.get(..end).unwrap_or(resource).to_owned()
        }
        None => resource.to_owned(),
    }
}

fn azure_part(resource: &str, kind: &str) -> Option<String> {
    let mut it = resource.split('/');
    while let Some(x) = it.next() {
        if x.eq_ignore_ascii_case(kind) {
            return it
                .next()
                .map(|s| s.split('#').next().unwrap_or(s).to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {

    #[test]
    fn console_agent_matches_a_case_insensitive_window_scan() {
        // The check before the prebuilt finders.
        let scan = |ua: Option<&str>| {
            ua.is_some_and(|u| {
                u.eq_ignore_ascii_case("aws internal")
                    || u.as_bytes()
                        .windows(14)
                        .any(|w| w.eq_ignore_ascii_case(b"console.amazon"))
                    || u.as_bytes()
                        .windows(12)
                        .any(|w| w.eq_ignore_ascii_case(b"aws-internal"))
            })
        };
        let long = format!("{}CONSOLE.AMAZONAWS.COM", "é".repeat(400));
        for ua in [
            None,
            Some(""),
            Some("AWS Internal"),
            Some("aws internal "),
            Some("signin.aws.amazon.com"),
            Some("console.amazonaws.com"),
            Some("Mozilla/5.0 Console.Amazon.com"),
            Some("aws-internal/3 aws-sdk-java/1.12"),
            Some("AWS-INTERNAL"),
            Some("Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux lang/python#3.11"),
            Some(long.as_str()),
        ] {
            assert_eq!(super::console_agent(ua), scan(ua), "{ua:?}");
        }
    }
    use std::net::IpAddr;

    use stormwall_types::{
        Alert, CloudContext, CloudProvider, ControlAction, ControlEvent, CredentialKind,
        DetectorId, Endpoint, Principal, Severity, UsageEvent,
    };
    use time::OffsetDateTime;

    use super::{CloudDetectors, CloudThresholds, recommend};

    const DAY: i64 = 86_400;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_740_000_000 + secs).unwrap()
    }

    fn det() -> CloudDetectors {
        CloudDetectors::new(
            CloudThresholds::default(),
            Vec::new(),
            [0.0, 5.0, 15.0, 30.0, 60.0],
        )
    }

    fn aws(id: &str, kind: CredentialKind) -> Principal {
        Principal {
            provider: CloudProvider::Aws,
            kind,
            id: id.into(),
            account: Some("111122223333".into()),
            name: Some("arn:aws:iam::111122223333:user/ci".into()),
        }
    }

    fn azure_actor(oid: &str) -> Principal {
        Principal {
            provider: CloudProvider::Azure,
            kind: CredentialKind::AzureEntraIdentity,
            id: format!("oid:{oid}"),
            account: Some("sub-1".into()),
            name: None,
        }
    }

    const RES: &str = "/subscriptions/sub-1/resourcegroups/rg/providers/microsoft.cognitiveservices/accounts/acct";

    fn ctx(p: Principal, op: &str, region: Option<&str>) -> CloudContext {
        CloudContext {
            principal: p,
            operation: op.into(),
            region: region.map(str::to_owned),
            resource: Some(RES.into()),
            ip_masked: false,
            ip_missing: false,
            error: None,
            bearer: false,
        }
    }

    fn control(at: i64, p: Principal, action: ControlAction, op: &str, ip: &str) -> ControlEvent {
        ControlEvent {
            timestamp: t(at),
            id: format!("c{at}-{op}"),
            dataset: "test".into(),
            action,
            success: true,
            source_ip: Some(ip.parse().unwrap()),
            user_agent: Some("Boto3/1.34".into()),
            cloud: ctx(p, op, Some("us-east-1")),
            service: Some("bedrock.amazonaws.com".into()),
            target: None,
            scopes: Vec::new(),
            loosens: false,
            count: 1,
            response_bytes: None,
        }
    }

    fn invoke(at: i64, p: Principal, ip: &str, region: &str, status: u16) -> UsageEvent {
        let ip: IpAddr = ip.parse().unwrap();
        let mut e = UsageEvent::new(
            format!("u{at}-{region}"),
            t(at),
            ip,
            "POST",
            "/model/invoke",
        );
        e.set_endpoint(Endpoint::ChatCompletions);
        e.status = status;
        e.model = Some("anthropic.claude-v2".into());
        e.key_id = Some(p.key_id());
        e.cloud = Some(Box::new(ctx(p, "InvokeModel", Some(region))));
        e
    }

    fn fired(out: &[Alert], d: DetectorId) -> Vec<Severity> {
        out.iter()
            .filter(|a| a.detector == d)
            .map(|a| a.severity)
            .collect()
    }

    #[test]
    fn e3_new_key_reader_after_learning_is_high_and_arms_h2_on_the_resource_key() {
        let mut d = det();
        let mut out = Vec::new();
        let admin = azure_actor("admin");
        // Learning: the admin reads keys in the first week; nothing fires.
        d.observe_control(
            &control(
                0,
                admin.clone(),
                ControlAction::ListKeys,
                "LISTKEYS",
                "192.0.2.1",
            ),
            &mut out,
        );
        let key = Principal {
            provider: CloudProvider::Azure,
            kind: CredentialKind::AzureResourceKey,
            id: format!("{RES}#key"),
            account: Some("sub-1".into()),
            name: None,
        };
        d.observe_usage(
            &invoke(100, key.clone(), "192.0.2.7", "eastus", 200),
            &mut out,
        );
        assert!(out.iter().all(|a| a.detector == DetectorId::E4), "{out:?}");
        out.clear();
        // Later the known admin reads keys again: silent.
        d.observe_control(
            &control(
                10 * DAY,
                admin,
                ControlAction::ListKeys,
                "LISTKEYS",
                "192.0.2.1",
            ),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // A new actor reads them: high, on the actor and on the resource key.
        d.observe_control(
            &control(
                10 * DAY + 60,
                azure_actor("intruder"),
                ControlAction::ListKeys,
                "LISTKEYS",
                "203.0.113.9",
            ),
            &mut out,
        );
        assert_eq!(
            fired(&out, DetectorId::E3),
            vec![Severity::High, Severity::High]
        );
        assert_eq!(out[1].key_id, Some(key.key_id()));
        out.clear();
        // The key used from its own network: nothing; from a new one: H2.
        d.observe_usage(
            &invoke(10 * DAY + 120, key.clone(), "192.0.2.8", "eastus", 200),
            &mut out,
        );
        assert!(fired(&out, DetectorId::H2).is_empty());
        d.observe_usage(
            &invoke(10 * DAY + 180, key.clone(), "198.51.100.4", "eastus", 200),
            &mut out,
        );
        assert_eq!(fired(&out, DetectorId::H2), vec![Severity::High]);
        out.clear();
        // Past the window, a new network is not H2 any more.
        d.observe_usage(
            &invoke(14 * DAY, key, "203.0.113.200", "eastus", 200),
            &mut out,
        );
        assert!(fired(&out, DetectorId::H2).is_empty());
    }

    #[test]
    fn e3_bulk_reads_are_high_even_while_learning_and_openai_broad_keys_by_new_actors() {
        let mut d = det();
        let mut out = Vec::new();
        let mut bulk = control(
            0,
            azure_actor("a"),
            ControlAction::ListKeys,
            "Audit/ListKey",
            "192.0.2.1",
        );
        bulk.count = 150;
        d.observe_control(&bulk, &mut out);
        assert_eq!(fired(&out, DetectorId::E3)[0], Severity::High);
        out.clear();
        let user = Principal {
            provider: CloudProvider::Openai,
            kind: CredentialKind::OpenaiSession,
            id: "user-1".into(),
            account: None,
            name: None,
        };
        d.observe_control(
            &control(
                0,
                user.clone(),
                ControlAction::Login,
                "login.succeeded",
                "192.0.2.1",
            ),
            &mut out,
        );
        let mut created = control(
            8 * DAY,
            user,
            ControlAction::CreateKey,
            "api_key.created",
            "203.0.113.1",
        );
        created.scopes = vec!["all".into()];
        created.target = Some("key_new".into());
        d.observe_control(&created, &mut out);
        let e3: Vec<&Alert> = out
            .iter()
            .filter(|a| a.detector == DetectorId::E3)
            .collect();
        assert_eq!(e3.len(), 2, "the creator and the created key");
        assert!(e3[1].subjects.iter().any(|s| s.value == "openai:key_new"));
    }

    #[test]
    fn e4_is_a_low_posture_finding_once_a_week() {
        let mut d = det();
        let mut out = Vec::new();
        let k = aws("AKIAEXAMPLE000000001", CredentialKind::AwsLongTermKey);
        for i in 0..5 {
            d.observe_usage(
                &invoke(i * 3600, k.clone(), "192.0.2.1", "us-east-1", 200),
                &mut out,
            );
        }
        assert_eq!(fired(&out, DetectorId::E4), vec![Severity::Low]);
        d.observe_usage(&invoke(8 * DAY, k, "192.0.2.1", "us-east-1", 200), &mut out);
        assert_eq!(fired(&out, DetectorId::E4).len(), 2);
        let s = aws(
            "arn:aws:sts::1:assumed-role/r/s",
            CredentialKind::AwsSessionKey,
        );
        out.clear();
        d.observe_usage(&invoke(0, s, "192.0.2.1", "us-east-1", 200), &mut out);
        assert!(out.is_empty(), "a session is not long-lived");
    }

    #[test]
    fn v3_logging_reads_by_non_admins_and_checkers() {
        let mut d = det();
        let mut out = Vec::new();
        let s = aws(
            "arn:aws:sts::1:assumed-role/app/s",
            CredentialKind::AwsSessionKey,
        );
        d.observe_control(
            &control(
                0,
                s.clone(),
                ControlAction::GetLoggingConfig,
                "GetModelInvocationLoggingConfiguration",
                "192.0.2.1",
            ),
            &mut out,
        );
        assert_eq!(fired(&out, DetectorId::V3), vec![Severity::Medium]);
        for i in 1..3 {
            d.observe_control(
                &control(
                    i * 180,
                    s.clone(),
                    ControlAction::GetLoggingConfig,
                    "GetModelInvocationLoggingConfiguration",
                    "192.0.2.1",
                ),
                &mut out,
            );
        }
        assert_eq!(
            fired(&out, DetectorId::V3),
            vec![Severity::Medium, Severity::High]
        );
        // An administrator of logging reads it without alert.
        out.clear();
        let admin = aws(
            "arn:aws:sts::1:assumed-role/admin/s",
            CredentialKind::AwsSessionKey,
        );
        d.observe_control(
            &control(
                0,
                admin.clone(),
                ControlAction::PutLoggingConfig,
                "PutModelInvocationLoggingConfiguration",
                "192.0.2.9",
            ),
            &mut out,
        );
        out.clear();
        d.observe_control(
            &control(
                60,
                admin,
                ControlAction::GetLoggingConfig,
                "GetModelInvocationLoggingConfiguration",
                "192.0.2.9",
            ),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn v5_preamble_is_high_and_an_invocation_after_it_critical() {
        let mut d = det();
        let mut out = Vec::new();
        let k = aws("AKIAEXAMPLE000000002", CredentialKind::AwsLongTermKey);
        for (i, (a, op)) in [
            (
                ControlAction::ListAgreementOffers,
                "ListFoundationModelAgreementOffers",
            ),
            (ControlAction::ModelUseCase, "PutUseCaseForModelAccess"),
            (
                ControlAction::ModelAgreement,
                "CreateFoundationModelAgreement",
            ),
            (
                ControlAction::ModelEntitlement,
                "PutFoundationModelEntitlement",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            d.observe_control(
                &control(i as i64 * 60, k.clone(), a, op, "203.0.113.7"),
                &mut out,
            );
        }
        let v5 = fired(&out, DetectorId::V5);
        assert_eq!(v5[0], Severity::Medium);
        assert!(v5.contains(&Severity::High));
        out.clear();
        d.observe_usage(&invoke(600, k, "203.0.113.7", "us-east-1", 200), &mut out);
        assert!(fired(&out, DetectorId::V5).contains(&Severity::Critical));
        // From the console, enabling models is the normal path.
        out.clear();
        let console = aws(
            "arn:aws:sts::1:assumed-role/Admin/alice",
            CredentialKind::AwsSessionKey,
        );
        let mut c = control(
            0,
            console,
            ControlAction::ModelUseCase,
            "PutUseCaseForModelAccess",
            "192.0.2.5",
        );
        c.user_agent = Some("AWS Internal".into());
        d.observe_control(&c, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn v6_denied_probing() {
        let mut d = det();
        let mut out = Vec::new();
        let k = aws("AKIAEXAMPLE000000003", CredentialKind::AwsLongTermKey);
        d.observe_usage(
            &invoke(0, k.clone(), "203.0.113.7", "us-east-1", 403),
            &mut out,
        );
        assert_eq!(fired(&out, DetectorId::V6), vec![Severity::Low]);
        for i in 1..5 {
            d.observe_usage(
                &invoke(i * 10, k.clone(), "203.0.113.7", "us-east-1", 403),
                &mut out,
            );
        }
        assert!(fired(&out, DetectorId::V6).contains(&Severity::High));
        out.clear();
        let other = aws("AKIAEXAMPLE000000004", CredentialKind::AwsLongTermKey);
        for i in 0..10 {
            let mut e = invoke(i, other.clone(), "203.0.113.7", "us-east-1", 403);
            e.set_endpoint(Endpoint::Models);
            d.observe_usage(&e, &mut out);
        }
        assert_eq!(
            fired(&out, DetectorId::V6),
            vec![Severity::High],
            "ten denied listings"
        );
    }

    #[test]
    fn x1_x2_x3_x4_tamper_and_loosening() {
        let mut d = det();
        let mut out = Vec::new();
        let a = azure_actor("x");
        d.observe_control(
            &control(
                0,
                a.clone(),
                ControlAction::DeleteLogging,
                "DIAGNOSTICSETTINGS/DELETE",
                "192.0.2.1",
            ),
            &mut out,
        );
        d.observe_control(
            &control(
                1,
                a.clone(),
                ControlAction::GuardrailDelete,
                "DeleteGuardrail",
                "192.0.2.1",
            ),
            &mut out,
        );
        let mut weak = control(
            2,
            a.clone(),
            ControlAction::GuardrailUpdate,
            "RAIPOLICIES/WRITE",
            "192.0.2.1",
        );
        d.observe_control(&weak, &mut out);
        weak.loosens = true;
        weak.id = "w2".into();
        weak.timestamp = t(3);
        d.observe_control(&weak, &mut out);
        let mut open = control(
            4,
            a.clone(),
            ControlAction::NetworkChange,
            "ACCOUNTS/WRITE",
            "192.0.2.1",
        );
        d.observe_control(&open, &mut out);
        open.loosens = true;
        d.observe_control(&open, &mut out);
        assert_eq!(fired(&out, DetectorId::X1), vec![Severity::High]);
        assert_eq!(
            fired(&out, DetectorId::X2),
            vec![Severity::High],
            "delete high; the plain update low is under the cooldown"
        );
        assert_eq!(
            fired(&out, DetectorId::X3),
            vec![Severity::High],
            "only the loosening change"
        );
        out.clear();
        let bearer = aws(
            "arn:aws:iam::1:user/BedrockAPIKey-ab",
            CredentialKind::AwsBedrockApiKey,
        );
        let mut del = control(
            5,
            bearer.clone(),
            ControlAction::DeleteLogging,
            "DeleteModelInvocationLoggingConfiguration",
            "203.0.113.1",
        );
        del.cloud.bearer = true;
        d.observe_control(&del, &mut out);
        assert_eq!(fired(&out, DetectorId::X4), vec![Severity::High]);
        out.clear();
        let mut s3 = control(
            7200,
            bearer,
            ControlAction::Other,
            "ListBuckets",
            "203.0.113.1",
        );
        s3.service = Some("s3.amazonaws.com".into());
        d.observe_control(&s3, &mut out);
        assert_eq!(
            fired(&out, DetectorId::X4),
            vec![Severity::High],
            "outside Bedrock"
        );
    }

    #[test]
    fn p7_three_regions_in_an_hour() {
        let mut d = det();
        let mut out = Vec::new();
        let k = aws(
            "arn:aws:sts::1:assumed-role/r/s",
            CredentialKind::AwsSessionKey,
        );
        d.observe_usage(
            &invoke(0, k.clone(), "192.0.2.1", "us-east-1", 200),
            &mut out,
        );
        d.observe_usage(
            &invoke(60, k.clone(), "192.0.2.1", "us-west-2", 200),
            &mut out,
        );
        d.observe_usage(
            &invoke(4000, k.clone(), "192.0.2.1", "us-east-1", 200),
            &mut out,
        );
        assert!(out.is_empty(), "two regions, then one an hour later");
        d.observe_usage(
            &invoke(4060, k.clone(), "192.0.2.1", "eu-west-1", 200),
            &mut out,
        );
        d.observe_usage(&invoke(4120, k, "192.0.2.1", "ap-south-1", 200), &mut out);
        assert_eq!(fired(&out, DetectorId::P7), vec![Severity::High]);
    }

    #[test]
    fn switched_off_detectors_stay_silent() {
        let mut d = CloudDetectors::new(CloudThresholds::default(), vec![DetectorId::X1], [0.0; 5]);
        let mut out = Vec::new();
        d.observe_control(
            &control(
                0,
                azure_actor("x"),
                ControlAction::DeleteLogging,
                "DIAGNOSTICSETTINGS/DELETE",
                "192.0.2.1",
            ),
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn recommendations_name_the_exact_command() {
        let at = t(0);
        let r = recommend(
            &aws("AKIAEXAMPLE7Q2R4T6Y8", CredentialKind::AwsLongTermKey),
            None,
            at,
        );
        assert_eq!(
            r.command,
            "aws iam update-access-key --user-name ci --access-key-id AKIAEXAMPLE7Q2R4T6Y8 --status Inactive"
        );
        let key = Principal {
            provider: CloudProvider::Azure,
            kind: CredentialKind::AzureResourceKey,
            id: format!("{RES}#key"),
            account: None,
            name: None,
        };
        let r = recommend(&key, Some(RES), at);
        assert!(r.command.starts_with("az cognitiveservices account keys regenerate --name acct --resource-group rg --key-name Key1"), "{}", r.command);
        let sa = Principal {
            provider: CloudProvider::Gcp,
            kind: CredentialKind::GcpServiceAccountKey,
            id: "ml@p.iam.gserviceaccount.com/keys/0123".into(),
            account: None,
            name: None,
        };
        assert_eq!(
            recommend(&sa, None, at).command,
            "gcloud iam service-accounts keys disable 0123 --iam-account ml@p.iam.gserviceaccount.com"
        );
        let role = Principal {
            name: Some("arn:aws:iam::1:role/ml-role".into()),
            ..aws(
                "arn:aws:sts::1:assumed-role/ml-role/s",
                CredentialKind::AwsSessionKey,
            )
        };
        assert!(
            recommend(&role, None, at)
                .command
                .contains("--role-name ml-role")
        );
    }
}
