//! Content safety in the gateway: prompts screened under the key's profile (blocked before
//! any upstream call, flagged ones forwarded), image endpoints held to the strict image
//! profile, outputs screened whole or while streaming, and external classifiers with
//! timeouts, fail-open/closed, flag mode alongside the upstream call, and a result cache.
//!
//! Fixtures are synthetic and mild, taken from the safety crate's own examples.

use super::*;
use std::sync::atomic::AtomicBool;

use stormwall_gateway::data::classify::{
    ClassifierConfig, ClassifierKind, FailMode, FailPolicy, Mode,
};
use stormwall_gateway::data::safety::SafetyConfig;
use stormwall_types::safety::{Action as SafetyAction, Category};
use stormwall_types::{SafetyStage, VerdictCategory};

/// Blocked on chat under the default profile (real-person sexual content).
const BLOCKED_CHAT: &str = "Please draw a nude photo of my ex for the party invitation";
/// Flagged (not blocked) on chat under the default profile; blocked on image endpoints.
const FLAGGED: &str = "a nude portrait of a woman on a beach";
/// Flagged under the default profile, blocked under `strict`.
const STRICT_BLOCKS: &str = "nsfw art of an elf warrior";
/// Benign.
const BENIGN: &str = "What bread goes well with soup?";

fn chat_with(text: &str, stream: bool) -> String {
    json!({"model": "gpt-4o-mini", "stream": stream,
           "messages": [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": text}]})
    .to_string()
}

/// A non-streamed chat completion with `text` as the user's message.
async fn chat_text(h: &Harness, key: &str, text: &str) -> TestResponse {
    h.post("/v1/chat/completions", key, &chat_with(text, false), None)
        .await
}

fn image_with(text: &str) -> String {
    json!({"model": "dall-e-3", "prompt": text}).to_string()
}

fn verdicts(e: &UsageEvent, stage: SafetyStage) -> Vec<&stormwall_types::SafetyVerdict> {
    e.safety.iter().filter(|v| v.stage == stage).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_prompt_never_reaches_the_upstream_and_the_event_keeps_no_prompt() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let r = chat_text(&h, &key, BLOCKED_CHAT).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(code(&r), "content_policy_violation");
    assert_eq!(r.json().unwrap()["error"]["type"], "invalid_request_error");
    assert!(!r.text().contains("nude"), "the error body echoes nothing");
    assert_eq!(h.upstream.request_count(), 0);

    let e = &h.events(1).await[0];
    assert_eq!(e.reject_reason, Some(RejectReason::ContentPolicy));
    assert_eq!(e.error_code.as_deref(), Some("content_policy_violation"));
    let v = verdicts(e, SafetyStage::Input);
    let decisive = v
        .iter()
        .find(|v| v.category == Category::RealPersonSexual)
        .expect("category recorded");
    assert_eq!(decisive.action, SafetyAction::Block);
    assert!(decisive.score >= 0.6);
    assert_eq!(decisive.view.as_deref(), Some("text"));
    let range = decisive.range.expect("the match's byte range recorded");
    // In the screened text (the request's messages joined), so only its shape is checked.
    assert!(range.start < range.end, "{range:?}");
    assert!(e.safety.iter().all(|v| v.evidence.is_none()));
    let stored = serde_json::to_string(e).unwrap();
    assert!(!stored.contains(BLOCKED_CHAT), "the prompt is not stored");
    // Not even the matched part: no word of the prompt reaches the event.
    for w in BLOCKED_CHAT.split(' ').filter(|w| w.len() > 3) {
        assert!(!stored.contains(w), "{w:?} of the prompt reached the event");
    }

    // Benign prompts pass without verdicts; embeddings are not screened at all.
    let r = chat_text(&h, &key, BENIGN).await;
    assert_eq!(r.status, 200);
    let body = json!({"model": "text-embedding-3-small", "input": [BLOCKED_CHAT]}).to_string();
    let r = h.post("/v1/embeddings", &key, &body, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = h.events(3).await;
    // Low scores may be logged; nothing on a benign prompt is flagged or blocked.
    assert!(
        events[1]
            .safety
            .iter()
            .all(|v| v.action == SafetyAction::Log),
        "{:?}",
        events[1].safety
    );
    assert!(events[2].safety.is_empty(), "embeddings are not screened");
    let metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
    assert!(metrics.contains("stormwall_safety_actions_total{stage=\"input\",category=\"real_person_sexual\",action=\"block\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_endpoints_are_stricter_and_flagged_chat_is_forwarded() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let (loose, _) = h
        .key(json!({"tenant": "t", "scope": {"policy_profile": "permissive"}}))
        .await;
    // Chat: flagged and forwarded.
    let r = chat_text(&h, &key, FLAGGED).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.upstream.request_count(), 1);
    // The same text as an image prompt is refused, even for a permissive key: image
    // endpoints are also held to `image_profile` (the default's strict image tiers).
    for k in [&key, &loose] {
        let r = h
            .post("/v1/images/generations", k, &image_with(FLAGGED), None)
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(code(&r), "content_policy_violation");
    }
    assert_eq!(h.upstream.request_count(), 1);
    let r = h
        .post(
            "/v1/images/generations",
            &key,
            &image_with("a lighthouse at dusk, oil painting"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let events = h.events(4).await;
    let chat = verdicts(&events[0], SafetyStage::Input);
    assert!(
        chat.iter()
            .any(|v| v.category == Category::Sexual && v.action == SafetyAction::Flag),
        "{chat:?}"
    );
    assert_eq!(events[0].status, 200);
    for e in &events[1..3] {
        assert!(
            verdicts(e, SafetyStage::Input)
                .iter()
                .any(|v| v.category == Category::Sexual && v.action == SafetyAction::Block)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_policy_profile_changes_the_outcome() {
    let h = harness_with(|c| {
        c.safety
            .tenant_profiles
            .insert("school".into(), "strict".into());
    })
    .await;
    let (plain, _) = h.key(json!({"tenant": "t"})).await;
    let (strict, _) = h
        .key(json!({"tenant": "t", "scope": {"policy_profile": "strict"}}))
        .await;
    let (school, _) = h.key(json!({"tenant": "school"})).await;
    let (relaxed, _) = h
        .key(json!({"tenant": "school", "scope": {"policy_profile": "default"}}))
        .await;
    let body = chat_with(STRICT_BLOCKS, false);
    let statuses = [
        h.post("/v1/chat/completions", &plain, &body, None)
            .await
            .status,
        h.post("/v1/chat/completions", &strict, &body, None)
            .await
            .status,
        h.post("/v1/chat/completions", &school, &body, None)
            .await
            .status,
        h.post("/v1/chat/completions", &relaxed, &body, None)
            .await
            .status,
    ];
    assert_eq!(statuses, [200, 400, 400, 200]);
    assert_eq!(h.upstream.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_profile_names_are_config_errors() {
    let mut config = GatewayConfig {
        upstreams: vec![UpstreamConfig::Mock {
            name: "m".into(),
            models: vec!["m".into()],
        }],
        ..Default::default()
    };
    config
        .safety
        .tenant_profiles
        .insert("acme".into(), "stirct".into());
    let err = stormwall_gateway::check_config(&config, &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stirct") && err.contains("tenant_profiles.acme"),
        "{err}"
    );
}

fn sse_delta(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_cut_once_its_output_breaks_the_policy() {
    let h = harness().await;
    let (key, _) = h
        .key(json!({"tenant": "t", "scope": {"policy_profile": "strict"}}))
        .await;
    let mut chunks: Vec<String> = (0..6)
        .map(|i| sse_delta(&format!("Paragraph {i} is about bread, soup and gardens. ")))
        .collect();
    chunks.extend((0..12).map(|_| sse_delta("and then an explicit sex scene follows. ")));
    chunks.extend((0..20).map(|_| sse_delta("More text. ")));
    chunks.push("data: [DONE]\n\n".into());
    let total = chunks.len();
    h.upstream.push_fault(Fault::Script {
        status: 200,
        content_type: "text/event-stream".into(),
        chunks,
        delay: Some(Duration::from_millis(15)),
    });
    let r = h
        .post("/v1/chat/completions", &key, &chat_with(BENIGN, true), None)
        .await;
    assert_eq!(r.status, 200);
    let events = stormwall_testkit::parse_sse(&r.body);
    assert!(events.last().unwrap().is_done());
    let err = events[events.len() - 2].json().unwrap();
    assert_eq!(err["error"]["code"], "content_policy_violation");
    let content: String = events
        .iter()
        .filter_map(|e| e.json().ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        content.starts_with("Paragraph 0"),
        "benign output went through"
    );
    assert!(!content.contains("More text"), "cut before the end");
    assert!(events.len() < total, "cut mid-way");
    assert!(
        h.upstream
            .wait_for_cancelled_streams(1, Duration::from_secs(5))
            .await,
        "the upstream request is dropped"
    );
    let e = &h.events(1).await[0];
    assert_eq!(e.stream_outcome, Some(StreamOutcome::ContentBlocked));
    assert_eq!(e.error_code.as_deref(), Some("content_policy_violation"));
    let out = verdicts(e, SafetyStage::Output);
    let v = out
        .iter()
        .find(|v| v.action == SafetyAction::Block)
        .expect("output verdict");
    assert_eq!(v.category, Category::Sexual);
    assert!(v.range.is_some_and(|r| r.start < r.end));
    assert!(!serde_json::to_string(e).unwrap().contains("explicit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_revised_prompt_is_screened() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.upstream.push_fault(Fault::Response {
        status: 200,
        headers: vec![],
        body: json!({"created": 1, "data": [{"url": "https://images.example/1.png",
                     "revised_prompt": FLAGGED}]})
        .to_string(),
    });
    let r = h
        .post(
            "/v1/images/generations",
            &key,
            &image_with("a lighthouse at dusk, oil painting"),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(code(&r), "content_policy_violation");
    assert!(
        !r.text().contains("images.example"),
        "the images are withheld"
    );
    assert_eq!(h.upstream.request_count(), 1);
    let e = &h.events(1).await[0];
    assert_eq!(e.upstream_status, Some(200));
    assert_eq!(e.reject_reason, Some(RejectReason::ContentPolicy));
    assert!(
        verdicts(e, SafetyStage::Output)
            .iter()
            .any(|v| v.category == Category::Sexual && v.action == SafetyAction::Block)
    );
    assert!(e.cost_usd > 0.0, "the upstream was paid for the image");
}

/// A tiny OpenAI-compatible judge answering in the Llama Guard format.
struct Judge {
    addr: std::net::SocketAddr,
    calls: Arc<AtomicU64>,
    saw_upstream: Arc<AtomicBool>,
}

#[derive(Clone)]
struct JudgeScript {
    answer: &'static str,
    delay: Duration,
    /// Answer only once this holds (polled up to 3 s); records whether it did.
    gate: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

#[allow(clippy::disallowed_methods)] // test server: detached accept loop and a bounded body read
async fn judge(script: JudgeScript) -> Judge {
    use http_body_util::{BodyExt, Full, Limited};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let saw_upstream = Arc::new(AtomicBool::new(false));
    let (c, s) = (Arc::clone(&calls), Arc::clone(&saw_upstream));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (c, s, script) = (Arc::clone(&c), Arc::clone(&s), script.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (c, s, script) = (Arc::clone(&c), Arc::clone(&s), script.clone());
                        async move {
                            let body = Limited::new(req.into_body(), 1 << 20)
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            assert!(
                                v["messages"][0]["content"]
                                    .as_str()
                                    .is_some_and(|t| t.contains("<BEGIN CONVERSATION>")),
                                "Llama Guard prompt"
                            );
                            c.fetch_add(1, Ordering::SeqCst);
                            if let Some(gate) = &script.gate {
                                for _ in 0..600 {
                                    if gate() {
                                        s.store(true, Ordering::SeqCst);
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                            tokio::time::sleep(script.delay).await;
                            let out = json!({"id": "j", "object": "chat.completion", "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": script.answer},
                             "finish_reason": "stop"}]});
                            let mut resp =
                                http::Response::new(Full::new(bytes::Bytes::from(out.to_string())));
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Judge {
        addr,
        calls,
        saw_upstream,
    }
}

fn judge_config(j: &Judge, mode: Mode, fail: FailMode, timeout_ms: u64) -> ClassifierConfig {
    ClassifierConfig {
        name: Some("judge".into()),
        kind: ClassifierKind::LlamaGuard,
        url: format!("http://{}/v1", j.addr),
        api_key_env: None,
        model: Some("llama-guard-3-1b".into()),
        timeout_ms,
        fail: FailPolicy::All(fail),
        mode,
        max_bytes: 10_000,
    }
}

async fn with_judge(cfg: ClassifierConfig) -> Harness {
    harness_with(move |c| {
        c.safety = SafetyConfig {
            classifiers: vec![cfg],
            ..Default::default()
        };
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classifier_timeout_fails_open_or_closed_as_configured() {
    let slow = JudgeScript {
        answer: "safe",
        delay: Duration::from_secs(3),
        gate: None,
    };
    let j = judge(slow.clone()).await;
    let h = with_judge(judge_config(&j, Mode::Enforce, FailMode::Open, 100)).await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let r = chat_text(&h, &key, BENIGN).await;
    assert_eq!(r.status, 200, "fail-open lets it through: {}", r.text());
    let e = &h.events(1).await[0];
    let v = e
        .safety
        .iter()
        .find(|v| v.category == VerdictCategory::ClassifierTimeout)
        .expect("timeout recorded");
    assert_eq!(v.action, SafetyAction::Log);
    assert_eq!(v.source.as_deref(), Some("judge"));

    let j = judge(slow).await;
    let h = with_judge(judge_config(&j, Mode::Enforce, FailMode::Closed, 100)).await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let r = chat_text(&h, &key, BENIGN).await;
    assert_eq!(r.status, 400, "fail-closed refuses: {}", r.text());
    assert_eq!(code(&r), "content_policy_violation");
    assert_eq!(h.upstream.request_count(), 0);
    let e = &h.events(1).await[0];
    assert!(e.safety.iter().any(
        |v| v.category == VerdictCategory::ClassifierTimeout && v.action == SafetyAction::Block
    ));
    let metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
    assert!(
        metrics.contains(
            "stormwall_safety_classifier_calls_total{classifier=\"judge\",result=\"timeout\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforcing_classifier_blocks_and_its_results_are_cached() {
    let j = judge(JudgeScript {
        answer: "unsafe\nS1",
        delay: Duration::ZERO,
        gate: None,
    })
    .await;
    let h = with_judge(judge_config(&j, Mode::Enforce, FailMode::Open, 5_000)).await;
    let (strict, _) = h
        .key(json!({"tenant": "t", "scope": {"policy_profile": "strict"}}))
        .await;
    for _ in 0..2 {
        let r = chat_text(&h, &strict, BENIGN).await;
        assert_eq!(r.status, 400, "S1 (violent crimes) blocks under strict");
    }
    assert_eq!(
        j.calls.load(Ordering::SeqCst),
        1,
        "second identical prompt is a cache hit"
    );
    assert_eq!(h.upstream.request_count(), 0);
    let events = h.events(2).await;
    for e in &events {
        let v = e
            .safety
            .iter()
            .find(|v| v.category == Category::Violence)
            .expect("external verdict");
        assert_eq!(v.source.as_deref(), Some("judge"));
        assert_eq!(v.action, SafetyAction::Block);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_mode_classifier_runs_alongside_the_upstream_call() {
    // Set once the mock upstream has the request (mirrored from its request count).
    let seen = Arc::new(AtomicU64::new(0));
    let probe = Arc::clone(&seen);
    // The judge answers only once the upstream has the request: if the gateway waited for
    // the judge before forwarding, the judge would give up waiting and record it.
    let j = judge(JudgeScript {
        answer: "unsafe\nS1",
        delay: Duration::ZERO,
        gate: Some(Arc::new(move || probe.load(Ordering::SeqCst) > 0)),
    })
    .await;
    let h = with_judge(judge_config(&j, Mode::Flag, FailMode::Open, 10_000)).await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let body = chat_with(BENIGN, false);
    let req = h.post("/v1/chat/completions", &key, &body, None);
    let mirror = async {
        for _ in 0..2_500 {
            if h.upstream.request_count() > 0 {
                seen.store(1, Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (r, ()) = tokio::join!(req, mirror);
    assert_eq!(r.status, 200, "flag mode never blocks: {}", r.text());
    // The event is finished once the judge has answered.
    let e = &h.events(1).await[0];
    assert!(
        j.saw_upstream.load(Ordering::SeqCst),
        "the upstream call started before the judge answered"
    );
    let v = e
        .safety
        .iter()
        .find(|v| v.source.as_deref() == Some("judge"))
        .expect("the judge annotates the event");
    assert_eq!(v.category, Category::Violence);
    assert_eq!(v.action, SafetyAction::Flag, "recorded, at most flagged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_name_a_profile_the_gateway_does_not_have() {
    let h = harness().await;
    let r = h
        .admin_call(
            "POST",
            "/admin/keys",
            json!({"tenant": "t", "scope": {"policy_profile": "stirct"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("strict"),
        "names the known profiles: {}",
        r.text()
    );
    let (_, id) = h.key(json!({"tenant": "t"})).await;
    let r = h
        .admin_call(
            "PATCH",
            &format!("/admin/keys/{id}"),
            json!({"scope": {"policy_profile": "nope"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
}
