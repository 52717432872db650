//! Integration tests of the mock upstream and the test clients, over real sockets.

// Shared helpers outside `#[test]` functions panic on failure too; that is their job.
#![allow(clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use stormwall_testkit::{
    Fault, MockConfig, MockUpstream, TestClient, http_request, http_stream, parse_sse,
};

const JSON: (&str, &str) = ("content-type", "application/json");
const AUTH: (&str, &str) = ("authorization", "Bearer sk-upstream-test");
const WAIT: Duration = Duration::from_secs(5);

async fn post(mock: &MockUpstream, path: &str, body: &str) -> stormwall_testkit::TestResponse {
    tokio::time::timeout(
        WAIT,
        http_request(
            "POST",
            &format!("{}{path}", mock.url()),
            &[JSON, AUTH],
            body.to_owned(),
            None,
        ),
    )
    .await
    .expect("request timed out")
    .expect("request failed")
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}],"max_tokens":5}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;

#[tokio::test]
async fn openai_endpoints_answer_like_the_real_api() {
    let mock = MockUpstream::start().await.unwrap();

    let r = post(&mock, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some());
    let v = r.json().unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "This is a mock reply"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["prompt_tokens"], CHAT.len() as u64 / 4);

    let r = post(&mock, "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&r.body);
    assert!(events.last().unwrap().is_done());
    let usage = events[events.len() - 2].json().unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);

    let r = post(
        &mock,
        "/v1/completions",
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say hi","stream":true}"#,
    )
    .await;
    let events = parse_sse(&r.body);
    assert_eq!(events[0].json().unwrap()["object"], "text_completion");
    assert!(events.last().unwrap().is_done());

    let r = post(
        &mock,
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":["a","b","c"]}"#,
    )
    .await;
    let v = r.json().unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"][2]["index"], 2);

    let r = post(
        &mock,
        "/v1/images/generations",
        r#"{"prompt":"a grey square","n":2}"#,
    )
    .await;
    let v = r.json().unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    let r = post(
        &mock,
        "/v1/responses",
        r#"{"model":"gpt-4o","input":"hello"}"#,
    )
    .await;
    let v = r.json().unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let r = post(
        &mock,
        "/v1/responses",
        r#"{"model":"gpt-4o","input":"hello","stream":true}"#,
    )
    .await;
    let events = parse_sse(&r.body);
    assert_eq!(events[0].event.as_deref(), Some("response.created"));
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("response.completed")
    );

    let r = http_request(
        "GET",
        &format!("{}/v1/models", mock.url()),
        &[AUTH],
        "",
        None,
    )
    .await
    .unwrap();
    let v = r.json().unwrap();
    assert_eq!(v["object"], "list");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini")
    );

    // Everything was recorded, in order, with headers and bodies.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 8);
    assert_eq!(mock.request_count(), 8);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer sk-upstream-test")
    );
    assert_eq!(reqs[0].json().unwrap()["max_tokens"], 5);
    assert_eq!(reqs[7].method, "GET");
    assert_eq!(reqs[7].path, "/v1/models");
    assert_eq!(
        mock.cancelled_streams(),
        0,
        "complete bodies are not cancellations"
    );
}

#[tokio::test]
async fn request_errors_look_like_openai_errors() {
    let mock = MockUpstream::start().await.unwrap();
    let r = post(&mock, "/v1/chat/completions", "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"]["type"], "invalid_request_error");
    let r = post(&mock, "/v1/chat/completions", r#"{"messages":[]}"#).await;
    assert_eq!(r.status, 400);
    let r = post(&mock, "/v1/nope", "{}").await;
    assert_eq!(r.status, 404);
    let r = http_request(
        "GET",
        &format!("{}/v1/chat/completions", mock.url()),
        &[],
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn azure_paths_use_the_deployment_as_model() {
    let mock = MockUpstream::start().await.unwrap();
    let path = "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21";
    let r = tokio::time::timeout(
        WAIT,
        http_request(
            "POST",
            &format!("{}{path}", mock.url()),
            &[JSON, ("api-key", "azure-secret")],
            CHAT,
            None,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["model"], "prod-gpt4o");
    let rec = mock.last_request().unwrap();
    assert_eq!(rec.path, path);
    assert_eq!(rec.header("api-key"), Some("azure-secret"));

    let r = post(
        &mock,
        "/openai/deployments/emb/embeddings?api-version=2024-10-21",
        r#"{"input":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["model"], "emb");

    let r = post(
        &mock,
        "/openai/deployments/dalle/images/generations?api-version=2024-10-21",
        r#"{"prompt":"x"}"#,
    )
    .await;
    assert_eq!(r.json().unwrap()["data"].as_array().unwrap().len(), 1);

    let r = post(
        &mock,
        "/openai/deployments/legacy/completions?api-version=2024-10-21",
        r#"{"prompt":"x"}"#,
    )
    .await;
    assert_eq!(r.json().unwrap()["object"], "text_completion");

    // Azure insists on api-version and answers 404 without it.
    let r = post(
        &mock,
        "/openai/deployments/prod-gpt4o/chat/completions",
        CHAT,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["error"]["message"], "Resource not found");
}

#[tokio::test]
async fn status_faults_apply_once_in_order_then_default() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::rate_limited());
    mock.push_fault(Fault::Status(500, String::new()));
    mock.push_fault(Fault::Response {
        status: 503,
        headers: vec![
            ("retry-after".into(), "7".into()),
            ("x-custom".into(), "yes".into()),
        ],
        body: "{}".into(),
    });

    let r = post(&mock, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json().unwrap()["error"]["code"], "rate_limit_exceeded");
    let r = post(&mock, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 500);
    assert!(r.json().unwrap()["error"]["message"].is_string());
    let r = post(&mock, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-custom"), Some("yes"));
    let r = post(&mock, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200, "the queue is used up");

    mock.set_default_fault(Some(Fault::server_error()));
    assert_eq!(post(&mock, "/v1/chat/completions", CHAT).await.status, 500);
    assert_eq!(post(&mock, "/v1/chat/completions", CHAT).await.status, 500);
    mock.clear_faults();
    assert_eq!(post(&mock, "/v1/chat/completions", CHAT).await.status, 200);
    assert_eq!(mock.request_count(), 7);
}

#[tokio::test]
async fn stall_sends_some_events_then_nothing_and_counts_the_disconnect() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::Stall { after_events: 2 });
    let mut s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT_STREAM,
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    let first = s.next_event().await.unwrap().unwrap();
    assert_eq!(
        first.json().unwrap()["choices"][0]["delta"]["role"],
        "assistant"
    );
    s.next_event().await.unwrap().unwrap();
    let third = tokio::time::timeout(Duration::from_millis(300), s.next_event()).await;
    assert!(
        third.is_err(),
        "the stream should be silent after two events"
    );
    assert_eq!(mock.cancelled_streams(), 0);
    drop(s);
    assert!(
        mock.wait_for_cancelled_streams(1, WAIT).await,
        "client disconnect must reach the mock"
    );
    assert!(mock.wait_until(WAIT, |m| m.open_connections() == 0).await);
}

#[tokio::test]
async fn stall_before_a_json_body() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::Stall { after_events: 0 });
    let s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT,
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200, "headers arrive, the body never does");
    let read = tokio::time::timeout(Duration::from_millis(300), s.read_to_end()).await;
    assert!(read.is_err());
    assert!(mock.wait_for_cancelled_streams(1, WAIT).await);
}

#[tokio::test]
async fn cut_drops_the_connection_mid_body() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::Cut { after_events: 3 });
    let mut s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT_STREAM,
        None,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        s.next_event().await.unwrap().unwrap();
    }
    let next = tokio::time::timeout(WAIT, s.next_event()).await.unwrap();
    assert!(
        matches!(next, Some(Err(_))),
        "a cut must surface as a body error, got {next:?}"
    );

    // A cut JSON body: headers with a content-length arrive, then the connection closes.
    mock.push_fault(Fault::Cut { after_events: 0 });
    let s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT,
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    assert!(s.headers.contains_key("content-length"));
    let r = tokio::time::timeout(WAIT, s.read_to_end()).await.unwrap();
    assert!(r.is_err(), "an incomplete body must be an error");
    mock.push_fault(Fault::Cut { after_events: 0 });
    let r = tokio::time::timeout(
        WAIT,
        http_request(
            "POST",
            &format!("{}/v1/chat/completions", mock.url()),
            &[JSON],
            CHAT,
            None,
        ),
    )
    .await
    .unwrap();
    assert!(r.is_err(), "an incomplete body must be an error");
    // Cuts are the mock's doing, not client cancellations.
    assert_eq!(mock.cancelled_streams(), 0);
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_counted() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::ChunkDelay(Duration::from_millis(50)));
    let mut s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT_STREAM,
        None,
    )
    .await
    .unwrap();
    s.next_event().await.unwrap().unwrap();
    s.next_event().await.unwrap().unwrap();
    drop(s);
    assert!(mock.wait_for_cancelled_streams(1, WAIT).await);

    // A stream read to the end is not a cancellation.
    let s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT_STREAM,
        None,
    )
    .await
    .unwrap();
    let body = s.read_to_end().await.unwrap();
    assert!(parse_sse(&body).last().unwrap().is_done());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mock.cancelled_streams(), 1);
}

#[tokio::test]
async fn timing_faults() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::SlowFirstByte(Duration::from_millis(250)));
    let started = std::time::Instant::now();
    assert_eq!(post(&mock, "/v1/chat/completions", CHAT).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));

    mock.push_fault(Fault::ChunkDelay(Duration::from_millis(20)));
    let started = std::time::Instant::now();
    let mut s = http_stream(
        "POST",
        &format!("{}/v1/chat/completions", mock.url()),
        &[JSON],
        CHAT_STREAM,
        None,
    )
    .await
    .unwrap();
    let mut n = 0;
    while let Some(ev) = s.next_event().await {
        ev.unwrap();
        n += 1;
    }
    // role + 12 deltas + finish + usage + [DONE], with a delay between consecutive events.
    assert_eq!(n, 16);
    assert!(started.elapsed() >= Duration::from_millis(20 * 15));
}

#[tokio::test]
async fn local_address_binding_is_seen_by_the_server() {
    let mock = MockUpstream::start().await.unwrap();
    for ip in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 1, 5)] {
        let r = http_request(
            "POST",
            &format!("{}/v1/chat/completions", mock.url()),
            &[JSON],
            CHAT,
            Some(IpAddr::V4(ip)),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(mock.last_request().unwrap().peer.ip(), IpAddr::V4(ip));
    }
    // A reusable client keeps its binding and its connection.
    let client = TestClient::new(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))));
    for _ in 0..3 {
        let r = client
            .request("GET", &format!("{}/v1/models", mock.url()), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            mock.last_request().unwrap().peer.ip(),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))
        );
    }
    assert_eq!(mock.connections_accepted(), 3);
}

#[tokio::test]
async fn unrecorded_mock_still_counts_and_shutdown_closes_the_port() {
    let mock = MockUpstream::start_with(MockConfig {
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    mock.push_fault(Fault::Stall { after_events: 1 });
    let url = format!("{}/v1/chat/completions", mock.url());
    let mut stalled = http_stream("POST", &url, &[JSON], CHAT_STREAM, None)
        .await
        .unwrap();
    stalled.next_event().await.unwrap().unwrap();
    assert_eq!(mock.request_count(), 1);
    assert!(mock.requests().is_empty());
    assert_eq!(mock.open_connections(), 1);

    // Shutdown ends the stalled stream (no hang) and stops listening.
    tokio::time::timeout(WAIT, mock.shutdown())
        .await
        .expect("shutdown must not hang on a stalled stream");
    let ended = tokio::time::timeout(WAIT, stalled.next_event())
        .await
        .unwrap();
    assert!(!matches!(ended, Some(Ok(_))));
    let refused = tokio::time::timeout(WAIT, http_request("POST", &url, &[JSON], CHAT, None))
        .await
        .unwrap();
    assert!(refused.is_err());
}
