//! The investigation on the admin API: events stored through the import endpoint and an
//! incident raised live become the assessment `GET /admin/investigation` serves — a relay
//! network fronting two tenants' keys is a provider with its reasons, both tenants are
//! victims, and the stored incident is a node with its harm.

use super::*;

const RELAY: &str = "203.0.113.77";

fn event(n: usize, key: &str, tenant: &str, ip: &str, at: time::OffsetDateTime) -> UsageEvent {
    let mut e = UsageEvent::new(
        format!("00000000-0000-7000-8000-{n:012}"),
        at,
        ip.parse().unwrap(),
        "POST",
        "/v1/chat/completions",
    );
    e.key_id = Some(KeyId::new(key).unwrap());
    e.tenant = Some(tenant.to_owned());
    e.endpoint = Some(stormwall_types::Endpoint::ChatCompletions);
    e.model = Some("gpt-4o-mini".into());
    e.input_tokens = Some(100);
    e.output_tokens = Some(200);
    e.status = 200;
    e
}

/// Each tenant's own use of its key, then a relay rotating both keys for two buyers whose
/// end users land on either key.
fn history(keys: &[(&str, &str, &str)]) -> Vec<UsageEvent> {
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    let mut n = 70_000;
    for (k, (key, tenant, own_ip)) in keys.iter().enumerate() {
        for i in 0..20 {
            let at = now - time::Duration::minutes(600 - i * 10);
            let mut e = event(n, key, tenant, own_ip, at);
            e.user_agent = Some("OpenAI/Python 1.51.0".into());
            e.header_names = ["host", "content-type", "authorization", "user-agent"]
                .map(String::from)
                .to_vec();
            e.system_prompt_hash = Some(format!("{k:x}0c0ffee0c0ffee0c0ffee0c0ffee0c0"));
            out.push(e);
            n += 1;
        }
    }
    for i in 0..40 {
        let (key, tenant, _) = keys[i % keys.len()];
        let at = now - time::Duration::minutes(300 - i as i64 * 5);
        let mut e = event(n, key, tenant, RELAY, at);
        e.user_agent = Some("relaykit/2.4.1".into());
        e.header_names = ["host", "content-type", "authorization", "x-relay-session"]
            .map(String::from)
            .to_vec();
        let buyer = (i / 2) % 2;
        e.system_prompt_hash = Some(format!("b{buyer}badc0debadc0debadc0debadc0de00"));
        e.end_user = Some(format!("buyer{buyer}-user{}", i % 3));
        out.push(e);
        n += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_the_assessment_with_roles_reasons_incidents_and_harm() {
    let mut h = harness().await;
    let (_, acme) = h.key(json!({"tenant": "acme"})).await;
    let (_, globex) = h.key(json!({"tenant": "globex"})).await;
    let events = history(&[(&acme, "acme", "10.1.0.5"), (&globex, "globex", "10.2.0.5")]);
    let r = h
        .admin_call("POST", "/admin/events", json!({ "events": events }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A canary's use raises an incident, stored with its key as subject.
    let (canary, canary_id) = h.key(json!({"tenant": "initech", "kind": "canary"})).await;
    assert_eq!(h.chat(&canary, "gpt-4o-mini").await.status, 401);
    let mut incident_id = None;
    for _ in 0..300 {
        let list = h
            .admin_get(&format!("/admin/incidents?key={canary_id}"))
            .await;
        if let Some(id) = list["incidents"][0]["id"].as_str() {
            incident_id = Some(id.to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let incident_id = incident_id.expect("the canary raised no incident");
    h.events(81).await;

    let a = h.admin_get("/admin/investigation").await;
    assert!(a["graph"]["events"].as_u64().unwrap() >= 81, "{a:#}");
    assert_eq!(a["graph"]["incidents"], 1, "{a:#}");
    assert_eq!(a["graph"]["truncated"], false);
    assert!(a["graph"]["nodes_by_kind"]["network"].as_u64().unwrap() >= 3);
    let roles = a["roles"].as_array().unwrap();
    let role_of =
        |entity: &str| -> Vec<&Value> { roles.iter().filter(|r| r["entity"] == entity).collect() };
    let provider = role_of("network:203.0.113.0/24");
    assert_eq!(provider.len(), 1, "{a:#}");
    assert_eq!(provider[0]["role"], "provider");
    let reasons = provider[0]["reasons"].as_array().unwrap();
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .contains("fronts 2 keys of 2 tenants"),
        "{reasons:#?}"
    );
    for t in ["tenant:acme", "tenant:globex"] {
        let v = role_of(t);
        assert_eq!(v.len(), 1, "{t}: {a:#}");
        assert_eq!(v[0]["role"], "victim");
    }
    // The tenants' own networks and the canary's tenant get no role.
    assert!(role_of("network:10.1.0.0/24").is_empty());
    assert!(role_of("tenant:initech").is_empty());
    let cluster = &a["clusters"][0];
    assert_eq!(cluster["harm"]["requests"], 40, "{a:#}");
    assert_eq!(a["victim_harm"]["acme"]["requests"], 20);
    // The incident is in the graph, with the canary's request counted toward its harm.
    let harm = &a["incident_harm"][incident_id.as_str()];
    assert!(harm["requests"].as_u64().unwrap() >= 1, "{a:#}");

    // Bounded, authenticated, GET only.
    let r = h
        .admin_call("GET", "/admin/investigation?max_events=0", Value::Null)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = h
        .admin_call("GET", "/admin/investigation?max_events=10", Value::Null)
        .await;
    assert_eq!(r.json().unwrap()["graph"]["truncated"], true);
    let r = h
        .admin_call("POST", "/admin/investigation", Value::Null)
        .await;
    assert_eq!(r.status, 405);
    let r = http_request(
        "GET",
        &format!("{}/admin/investigation", h.admin),
        &[],
        String::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    h.shutdown().await;
}
