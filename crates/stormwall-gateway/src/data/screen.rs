//! The screen stages: the request's prompt before any upstream call, and a whole answer
//! before the client sees it (streamed answers are screened as they pass, by the stream
//! guard the relay carries — see [`crate::data::safety::StreamGuard`]). Verdicts go on the
//! event; never the prompt, unless the key's profile keeps evidence.

use std::sync::Arc;

use stormwall_types::{Endpoint, RejectReason};

use super::DataPlane;
use crate::data::keycache::CachedKey;
use crate::data::recorder::Recorder;
use crate::data::request::ParsedRequest;
use crate::error::ProxyError;

/// The screen-request stage: the prompt under the key's profile, then the enforce-mode
/// classifiers; a block refuses the request with `content_policy_violation` before any
/// upstream call. Verdicts (never the prompt, unless the profile keeps evidence) go on the
/// event. Flag-mode classifiers start here and run alongside the upstream call.
pub async fn screen_request(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    key: &CachedKey,
    endpoint: Endpoint,
    parsed: &ParsedRequest,
) -> Result<Option<crate::data::safety::RequestSafety>, ProxyError> {
    let Some(stage) = &state.safety else {
        return Ok(None);
    };
    let Some(kind) = crate::data::safety::input_kind(endpoint) else {
        return Ok(None);
    };
    let (profile, known) = stage.profile_for(
        &key.record.tenant,
        key.record.scope.policy_profile.as_deref(),
        kind,
    );
    if !known {
        tracing::warn!(
            key_id = key.record.id.as_str(),
            "key names an unknown policy profile; screening with its tenant's"
        );
    }
    let text: Arc<str> = Arc::from(parsed.prompt_text.as_str());
    let mut verdict = if text.is_empty() {
        stormwall_safety::Verdict::allow(kind)
    } else {
        stage
            .analyze(Arc::clone(&text), kind)
            .await
            .decide(kind, &profile)
    };
    let mut notes = Vec::new();
    let mut fail_closed = false;
    if !verdict.is_blocked() && !text.is_empty() {
        fail_closed = stage
            .enforce(
                &state.client,
                &state.metrics,
                &text,
                &mut verdict,
                &profile,
                &mut notes,
            )
            .await;
    }
    let input = stormwall_types::SafetyStage::Input;
    crate::data::safety::count(&state.metrics, input, &verdict);
    let e = rec.event();
    e.safety.extend(crate::data::safety::record(
        &verdict, input, &text, &profile,
    ));
    e.safety.extend(notes);
    if verdict.is_blocked() || fail_closed {
        return Err(ProxyError::reject(RejectReason::ContentPolicy));
    }
    let pending = if text.is_empty() {
        None
    } else {
        stage.spawn_flag(
            &state.client,
            Arc::clone(&state.metrics.safety),
            text,
            verdict,
            Arc::clone(&profile),
        )
    };
    Ok(Some(crate::data::safety::RequestSafety {
        stage: Arc::clone(stage),
        profile,
        kind,
        pending,
    }))
}

/// Screens a non-streamed answer (chat, completions and responses text; images'
/// `revised_prompt`) and records the verdicts; `true` when it must be withheld.
pub async fn screen_output(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    s: &crate::data::safety::RequestSafety,
    endpoint: stormwall_types::Endpoint,
    body: &[u8],
) -> bool {
    let Some((text, kind)) = crate::data::safety::output_text(endpoint, body) else {
        return false;
    };
    let text: Arc<str> = text.into();
    let verdict = s
        .stage
        .analyze(Arc::clone(&text), kind)
        .await
        .decide(kind, &s.profile);
    let output = stormwall_types::SafetyStage::Output;
    crate::data::safety::count(&state.metrics, output, &verdict);
    rec.event().safety.extend(crate::data::safety::record(
        &verdict, output, &text, &s.profile,
    ));
    verdict.is_blocked()
}
