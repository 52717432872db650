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

    // Personal data is redacted unless asked for.
    let redacted = h.admin_get("/admin/investigation").await;
    let text = redacted.to_string();
    for name in [
        "acme",
        "globex",
        "initech",
        &acme,
        &globex,
        &incident_id,
        "buyer0-",
    ] {
        assert!(!text.contains(name), "{name} in {redacted:#}");
    }
    assert_eq!(
        redacted["roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["role"] == "victim")
            .filter(|r| r["entity"].as_str().unwrap().starts_with("tenant:tenant-"))
            .count(),
        2,
        "{redacted:#}"
    );
    assert_eq!(
        redacted["graph"],
        h.admin_get("/admin/investigation").await["graph"]
    );

    let a = h
        .admin_get("/admin/investigation?include_personal_data=true")
        .await;
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

    // Asking for personal data was audited, by the token holder.
    let audit = h.admin_get("/admin/audit").await;
    let asked: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "investigate.include_personal_data")
        .collect();
    assert_eq!(asked.len(), 1, "{audit:#}");
    assert_eq!(asked[0]["actor"], "admin");

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
    let r = h
        .admin_call(
            "GET",
            "/admin/investigation?include_personal_data=yes",
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
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

async fn decide(h: &Harness, body: Value) -> Value {
    let r = h
        .admin_call("POST", "/admin/investigation/overrides", body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_decide_through_the_admin_api_audited_and_applied_on_every_rebuild() {
    let mut h = harness().await;
    let (_, acme) = h.key(json!({"tenant": "acme"})).await;
    let (_, globex) = h.key(json!({"tenant": "globex"})).await;
    let events = history(&[(&acme, "acme", "10.1.0.5"), (&globex, "globex", "10.2.0.5")]);
    let r = h
        .admin_call("POST", "/admin/events", json!({ "events": events }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    h.events(80).await;

    let relay = "network:203.0.113.0/24";
    let d = decide(
        &h,
        json!({"analyst": "ana", "op": "reject", "entity": "tenant:globex", "role": "victim"}),
    )
    .await;
    assert_eq!(d["analyst"], "ana");
    assert_eq!(d["op"], "reject");
    assert!(d["audit_seq"].as_u64().unwrap() >= 1);
    decide(
        &h,
        json!({"analyst": "ana", "op": "confirm", "entity": relay, "role": "provider"}),
    )
    .await;
    decide(
        &h,
        json!({"analyst": "bo.b", "op": "confirm", "entity": "network:10.2.0.0/24", "role": "provider"}),
    )
    .await;
    decide(
        &h,
        json!({"analyst": "ana", "op": "annotate", "entity": relay, "note": "sold on a forum"}),
    )
    .await;
    decide(
        &h,
        json!({"analyst": "ana", "op": "merge", "entity": relay, "with": "network:10.1.0.0/24"}),
    )
    .await;
    decide(
        &h,
        json!({"analyst": "ana", "op": "split", "entity": "tenant:acme"}),
    )
    .await;

    // Every GET rebuilds the graph and applies the decisions from the audit log.
    for _ in 0..2 {
        let a = h
            .admin_get("/admin/investigation?include_personal_data=true&analyst=ana")
            .await;
        let roles = a["roles"].as_array().unwrap();
        let find = |entity: &str, role: &str| {
            roles
                .iter()
                .find(|r| r["entity"] == entity && r["role"] == role)
                .cloned()
        };
        let p = find(relay, "provider").expect("the relay is a provider");
        assert_eq!(p["status"], "confirmed", "{p:#}");
        assert!(
            p["reasons"].to_string().contains("confirmed by ana at"),
            "{p:#}"
        );
        assert!(
            p["notes"][0]
                .as_str()
                .unwrap()
                .starts_with("sold on a forum (ana at "),
            "{p:#}"
        );
        let added = find("network:10.2.0.0/24", "provider").expect("bo.b's provider");
        assert!(
            added["reasons"][0]
                .as_str()
                .unwrap()
                .starts_with("assigned by bo.b at")
        );
        assert!(find("tenant:globex", "victim").is_none(), "{a:#}");
        let rejected = a["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), 1, "{a:#}");
        assert_eq!(rejected[0]["entity"], "tenant:globex");
        // Merged: acme's own network sits in the relay's cluster; split: acme alone.
        let cluster = p["cluster"].as_str().unwrap();
        let members = a["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == cluster)
            .unwrap()["members"]
            .to_string();
        assert!(members.contains("network:10.1.0.0/24"), "{members}");
        let acme_role = find("tenant:acme", "victim").expect("acme is still a victim");
        assert_ne!(acme_role["cluster"], cluster);
    }

    // Redacted by default: no tenant id and no analyst's name.
    let a = h.admin_get("/admin/investigation").await;
    let text = a.to_string();
    for name in ["acme", "globex", "ana at", "bo.b"] {
        assert!(!text.contains(name), "{name} in {a:#}");
    }
    assert!(text.contains("sold on a forum (an analyst at "), "{a:#}");
    assert!(
        a["rejected"][0]["entity"]
            .as_str()
            .unwrap()
            .starts_with("tenant:tenant-")
    );

    // Audited with who did it; the personal-data read too, under the analyst's name.
    let audit = h.admin_get("/admin/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    let by = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|r| r["action"] == action).collect()
    };
    assert_eq!(by("investigate.reject")[0]["actor"], "analyst:ana");
    assert_eq!(by("investigate.reject")[0]["target"], "tenant:globex");
    assert_eq!(by("investigate.confirm").len(), 2);
    assert_eq!(by("investigate.confirm")[1]["actor"], "analyst:bo.b");
    assert_eq!(
        by("investigate.annotate")[0]["detail"]["note"],
        "sold on a forum"
    );
    assert_eq!(by("investigate.merge")[0]["detail"]["via"], "admin_api");
    assert_eq!(by("investigate.split").len(), 1);
    let pd = by("investigate.include_personal_data");
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[0]["actor"], "analyst:ana");
    assert_eq!(h.admin_get("/admin/audit/verify").await["ok"], true);

    // Refused: no analyst, a bad handle, not a node id, an unknown op or role, an empty
    // note, a missing field; POST only.
    for bad in [
        json!({"op": "split", "entity": relay}),
        json!({"analyst": "", "op": "split", "entity": relay}),
        json!({"analyst": "a b", "op": "split", "entity": relay}),
        json!({"analyst": "ana", "op": "split", "entity": "203.0.113.0/24"}),
        json!({"analyst": "ana", "op": "split", "entity": "planet:mars"}),
        json!({"analyst": "ana", "op": "delete", "entity": relay}),
        json!({"analyst": "ana", "op": "confirm", "entity": relay, "role": "boss"}),
        json!({"analyst": "ana", "op": "confirm", "entity": relay}),
        json!({"analyst": "ana", "op": "annotate", "entity": relay, "note": " "}),
        json!({"analyst": "ana", "op": "merge", "entity": relay, "with": "x"}),
    ] {
        let r = h
            .admin_call("POST", "/admin/investigation/overrides", bad.clone())
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = h
        .admin_call("GET", "/admin/investigation/overrides", Value::Null)
        .await;
    assert_eq!(r.status, 405);
    let r = http_request(
        "POST",
        &format!("{}/admin/investigation/overrides", h.admin),
        &[],
        json!({"analyst": "ana", "op": "split", "entity": relay}).to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // Nothing refused reached the log.
    let audit = h.admin_get("/admin/audit").await;
    let decisions = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"].as_str().unwrap().starts_with("analyst:"))
        .filter(|r| r["action"] != "investigate.include_personal_data")
        .count();
    assert_eq!(decisions, 6);
    h.shutdown().await;
}

/// A secret a broken or hostile findings file might carry in `redacted`.
const SCAN_SECRET: &str = "swk_leakedkey001_q9W8e7R6t5Y4u3I2o1P0aSdFgHjKlZx1A2b3C";
const COMMITTER: &str = "jane.committer@example.com";

fn scan_finding(path: &str, line: u64, key_id: Option<&str>) -> stormwall_scan::Finding {
    use stormwall_scan::{Confidence, Finding, GitOrigin, Location, SourceKind};
    Finding {
        location: Location {
            path: path.to_owned(),
            line,
            column: 9,
            end_column: 61,
            source: SourceKind::Git,
            blob: Some("5d41402abc4b2a76b9719d911017c592aabbccdd".to_owned()),
            git: Some(GitOrigin {
                commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                author: "Jane Committer".to_owned(),
                email: COMMITTER.to_owned(),
                time: 1_741_000_500,
            }),
        },
        provider: "Stormwall".to_owned(),
        rule: "stormwall-api-key".to_owned(),
        rule_name: "Stormwall API key".to_owned(),
        confidence: Confidence::High,
        validated: key_id.is_some(),
        redacted: SCAN_SECRET.to_owned(),
        fingerprint: format!("{:032x}", line * 7919 + path.len() as u64),
        key_id: key_id.map(str::to_owned),
    }
}

async fn submit(h: &Harness, query: &str, body: String) -> stormwall_testkit::TestResponse {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    http_request(
        "POST",
        &format!("{}/admin/investigation/scan-findings{query}", h.admin),
        &[
            ("authorization", &auth),
            ("content-type", "application/x-ndjson"),
        ],
        body,
        None,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_findings_submitted_to_the_admin_api_are_audited_exposures_without_secrets() {
    let mut h = harness().await;
    let (_, acme) = h.key(json!({"tenant": "acme"})).await;
    let (_, globex) = h.key(json!({"tenant": "globex"})).await;
    let events = history(&[(&acme, "acme", "10.1.0.5"), (&globex, "globex", "10.2.0.5")]);
    let r = h
        .admin_call("POST", "/admin/events", json!({ "events": events }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    h.events(80).await;

    let findings = [
        scan_finding("deploy/.env", 3, Some(&acme)),
        scan_finding("src/client.py", 12, Some(&globex)),
        // A checksum that failed: names no key.
        scan_finding("web/bundle.js", 1, None),
    ];
    let mut text = Vec::new();
    stormwall_scan::report::write_jsonl(&mut text, &findings).unwrap();
    let text = String::from_utf8(text).unwrap();
    let r = submit(&h, "?analyst=ana", text.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["findings"], 3);
    assert_eq!(v["recorded"], 2);
    assert_eq!(v["not_stormwall_keys"], 1);
    let mut keys = vec![acme.clone(), globex.clone()];
    keys.sort();
    assert_eq!(v["keys"], json!(keys));
    // The same report again: nothing recorded twice.
    let v = submit(&h, "", text).await.json().unwrap();
    assert_eq!(
        (v["recorded"].as_u64(), v["already_recorded"].as_u64()),
        (Some(0), Some(2))
    );

    // Every assessment holds them as exposures linked to their keys, and the victim's
    // reasons count them.
    let a = h
        .admin_get("/admin/investigation?include_personal_data=true&analyst=ana")
        .await;
    assert_eq!(a["graph"]["nodes_by_kind"]["exposure"], 2, "{a:#}");
    let victim = a["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["entity"] == "tenant:acme" && r["role"] == "victim")
        .expect("acme is a victim")
        .to_string();
    assert!(victim.contains("found exposed in 1 place"), "{victim}");

    // Audited with who submitted; no secret and no committer anywhere it went.
    let audit = h.admin_get("/admin/audit").await;
    let recorded: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "investigate.scan_finding")
        .collect();
    assert_eq!(recorded.len(), 2, "{audit:#}");
    assert_eq!(recorded[0]["actor"], "analyst:ana");
    assert_eq!(recorded[0]["target"], acme.as_str());
    for text in [audit.to_string(), a.to_string()] {
        assert!(!text.contains(SCAN_SECRET) && !text.contains("q9W8e7R6"));
        assert!(!text.contains(COMMITTER) && !text.contains("Jane Committer"));
    }

    // Refused: not the scanner's JSON lines (nothing of the body echoed), a bad handle,
    // another method.
    let r = submit(&h, "", format!("{SCAN_SECRET}\n")).await;
    assert_eq!(r.status, 400);
    assert!(!r.text().contains(SCAN_SECRET), "{}", r.text());
    let r = submit(&h, "", r#"{"runs": []}"#.to_owned()).await;
    assert_eq!(r.status, 400);
    let r = submit(&h, "?analyst=no%20spaces", String::new()).await;
    assert_eq!(r.status, 400);
    let r = h
        .admin_call("GET", "/admin/investigation/scan-findings", Value::Null)
        .await;
    assert_eq!(r.status, 405);
    h.shutdown().await;
}
