//! Incidents live: several alerts about one key become one stored incident and one
//! notification (webhook, JSON lines), and an operator's acknowledgement or false-positive
//! verdict on the incident applies to its alerts and is audited.

use super::*;

/// Waits until the receiver has had `n` requests, or a while.
async fn wait_requests(receiver: &MockUpstream, n: u64) {
    receiver
        .wait_until(Duration::from_secs(10), |r| r.request_count() >= n)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_on_one_key_are_one_incident_one_notification_and_ack_applies_to_them() {
    let receiver = MockUpstream::start().await.unwrap();
    let url = format!("{}/hooks/stormwall", receiver.url());
    let lines = std::env::temp_dir().join(format!(
        "stormwall-incidents-{}.jsonl",
        stormwall_types::ApiKey::generate().id_str()
    ));
    let jsonl = lines.clone();
    let mut h = harness_with(move |c| {
        c.alerts.webhook_url = Some(url);
        c.alerts.webhook_secret_env = Some("HOOK_SECRET".into());
        c.alerts.jsonl_path = Some(jsonl);
        // The same detector may fire again a second later: three alerts, one incident.
        c.detect.alert_cooldown_secs = 1;
    })
    .await;
    let (canary, canary_id) = h.key(json!({"tenant": "acme", "kind": "canary"})).await;
    let mut alerts = Vec::new();
    for n in 1..=3 {
        assert_eq!(h.chat(&canary, "gpt-4o-mini").await.status, 401);
        alerts = wait_alerts_for(&h, &canary_id, n).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    // One incident holding the three alerts, with its timeline and evidence.
    let list = h
        .admin_get(&format!("/admin/incidents?key={canary_id}"))
        .await;
    let incidents = list["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{list:#}");
    let inc = &incidents[0];
    let id = inc["id"].as_str().unwrap().to_owned();
    assert_eq!(inc["subject"], json!({"kind": "key", "value": canary_id}));
    assert_eq!(inc["tenant"], "acme");
    assert_eq!(inc["status"], "open");
    assert_eq!(inc["severity"], "critical");
    assert_eq!(inc["stages"], json!(["harvest"]));
    assert_eq!(inc["alert_ids"].as_array().unwrap().len(), 3, "{inc:#}");
    assert_eq!(inc["timeline"].as_array().unwrap().len(), 3);
    assert_eq!(inc["evidence"].as_array().unwrap().len(), 3);
    assert!(!inc["reasons"].as_array().unwrap().is_empty());
    let detail = h.admin_get(&format!("/admin/incidents/{id}")).await;
    assert_eq!(detail["id"], json!(id));
    let detail_alerts = detail["alerts"].as_array().unwrap();
    assert_eq!(detail_alerts.len(), 3);
    assert!(detail_alerts.iter().all(|a| a["detector"] == "H1"));

    // One webhook notification: the incident opened; the next two alerts changed nothing a
    // person must hear about again.
    wait_requests(&receiver, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = receiver.requests();
    assert_eq!(calls.len(), 1, "one notification per incident");
    let call = &calls[0];
    assert_eq!(call.header("x-stormwall-event"), Some("incident"));
    let sig = call.header("x-stormwall-signature").unwrap();
    let t: i64 = sig
        .strip_prefix("t=")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sig,
        stormwall_gateway::control::webhook::signature(HOOK_SECRET.as_bytes(), t, &call.body)
    );
    let body: Value = call.json().unwrap();
    assert_eq!(body["type"], "incident");
    assert_eq!(body["change"], "opened");
    assert_eq!(body["incident"]["id"], json!(id));
    assert_eq!(body["incident"]["severity"], "critical");
    // The JSON-lines file has the same one line, and no secret.
    let text = std::fs::read_to_string(&lines).unwrap_or_default();
    let _ = std::fs::remove_file(&lines);
    assert_eq!(text.lines().count(), 1, "{text}");
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["type"], "incident");
    assert_eq!(line["incident"]["id"], json!(id));
    assert!(!text.contains(&canary));

    let metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
    assert!(
        metrics.contains(r#"stormwall_incidents_total{change="opened",severity="critical"} 1"#),
        "{metrics}"
    );
    // Filters.
    assert_eq!(
        h.admin_get("/admin/incidents?severity=high&status=open")
            .await["incidents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        h.admin_get("/admin/incidents?status=resolved").await["incidents"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let alert_id = alerts[0]["id"].as_str().unwrap();
    let by_alert = h
        .admin_get(&format!("/admin/incidents?alert={alert_id}"))
        .await;
    assert_eq!(by_alert["incidents"][0]["id"], json!(id));
    for bad in [
        "status=done",
        "severity=urgent",
        "since=yesterday",
        "key=x",
        "network=not-a-net",
    ] {
        let r = h
            .admin_call("GET", &format!("/admin/incidents?{bad}"), Value::Null)
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    // Acknowledging the incident acknowledges its alerts, and is audited.
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/incidents/{id}/ack"),
            json!({"note": "on-call has it"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let acked = r.json().unwrap();
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(acked["note"], "on-call has it");
    for a in alerts_of(&h, &canary_id).await {
        assert_eq!(a["status"], "acknowledged", "{a:#}");
        assert_eq!(a["note"], "on-call has it");
    }
    let audit = h.admin_get(&format!("/admin/audit?target={id}")).await;
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "incident.acknowledged");
    assert_eq!(entry["actor"], "admin");
    assert_eq!(entry["detail"]["alert_ids"].as_array().unwrap().len(), 3);
    let audit = h
        .admin_get(&format!("/admin/audit?target={alert_id}"))
        .await;
    assert_eq!(audit["entries"][0]["action"], "alert.acknowledged");
    assert_eq!(audit["entries"][0]["detail"]["incident_id"], json!(id));

    // A false-positive verdict marks every alert so; resolve is the third verb.
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/incidents/{id}/false-positive"),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["status"], "false_positive");
    for a in alerts_of(&h, &canary_id).await {
        assert_eq!(a["status"], "false_positive", "{a:#}");
    }
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/incidents/{id}/resolve"),
            Value::Null,
        )
        .await;
    assert_eq!(r.json().unwrap()["status"], "resolved");

    // Unknown incidents and verbs are 404, bad notes 400, other methods 405.
    for (method, path, body, status) in [
        (
            "POST",
            "/admin/incidents/nope/ack".to_owned(),
            Value::Null,
            404,
        ),
        ("GET", "/admin/incidents/nope".to_owned(), Value::Null, 404),
        (
            "POST",
            format!("/admin/incidents/{id}/close"),
            Value::Null,
            404,
        ),
        (
            "POST",
            format!("/admin/incidents/{id}/ack"),
            json!({"note": "x".repeat(3000)}),
            400,
        ),
        ("DELETE", format!("/admin/incidents/{id}"), Value::Null, 405),
    ] {
        let r = h.admin_call(method, &path, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
    }
    h.shutdown().await;
}

/// The key's alerts.
async fn alerts_of(h: &Harness, key_id: &str) -> Vec<Value> {
    let r = h
        .admin_call("GET", &format!("/admin/alerts?key={key_id}"), Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["alerts"].as_array().unwrap().clone()
}

/// Waits until the key has at least `n` alerts.
async fn wait_alerts_for(h: &Harness, key_id: &str, n: usize) -> Vec<Value> {
    for _ in 0..300 {
        let a = alerts_of(h, key_id).await;
        if a.len() >= n {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} alerts for {key_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_next_alert_joins_the_stored_incident() {
    let receiver = MockUpstream::start().await.unwrap();
    let url = format!("{}/hooks/stormwall", receiver.url());
    let mut h = harness_with(move |c| {
        c.alerts.webhook_url = Some(url);
        c.detect.alert_cooldown_secs = 1;
    })
    .await;
    let (canary, canary_id) = h.key(json!({"tenant": "acme", "kind": "canary"})).await;
    assert_eq!(h.chat(&canary, "gpt-4o-mini").await.status, 401);
    wait_alerts_for(&h, &canary_id, 1).await;
    wait_requests(&receiver, 1).await;
    // A new process on the same store and config: its grouper starts empty.
    h.shutdown().await;
    let gw = start(
        h.config.clone(),
        Arc::clone(&h.store) as Arc<dyn Store>,
        &EventsConfig {
            flush_interval_ms: 10,
            ..Default::default()
        },
        SecretString::from(ADMIN_TOKEN),
        &env,
    )
    .await
    .unwrap();
    h.proxy = format!("http://{}", gw.proxy_addr);
    h.admin = format!("http://{}", gw.admin_addr);
    h.gw = Some(gw);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(h.chat(&canary, "gpt-4o-mini").await.status, 401);
    wait_alerts_for(&h, &canary_id, 2).await;
    let mut incidents = Vec::new();
    for _ in 0..100 {
        let page = h
            .admin_get(&format!("/admin/incidents?key={canary_id}"))
            .await;
        incidents = page["incidents"].as_array().unwrap().clone();
        if incidents
            .iter()
            .map(|i| i["alert_ids"].as_array().unwrap().len())
            .sum::<usize>()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0]["alert_ids"].as_array().unwrap().len(), 2);
    assert_eq!(incidents[0]["timeline"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.request_count(), 1, "no second notification");
    h.shutdown().await;
}

/// An alert about a source network (no key: a Sigma match on a record without a principal).
fn network_alert(n: u64, at: time::OffsetDateTime) -> Alert {
    Alert {
        id: format!("net-alert-{n}"),
        detector: stormwall_types::DetectorId::S1,
        stage: stormwall_types::DetectorId::S1.stage(),
        severity: stormwall_types::Severity::High,
        at,
        key_id: None,
        tenant: None,
        // Another address of the same /24 each time: one network, and no de-duplication
        // of the alert (that is per source address).
        source_ip: Some(format!("198.51.100.{}", 6 + n).parse().unwrap()),
        features: Vec::new(),
        subjects: Vec::new(),
        explanation: "A Sigma rule matched. Synthetic.".into(),
        evidence: vec![format!("net-ev-{n}")],
        score: 30.0,
    }
}

/// Hands an alert raised outside the engine to the detection task, as cloud-log follow mode
/// does.
async fn external(h: &Harness, alert: Alert) {
    let gw = h.gw.as_ref().unwrap();
    gw.control.detection.as_ref().unwrap().external(alert).await;
}

/// The incidents about the test network.
/// A key's incidents, newest first, once there are at least `n` (or what there is after
/// five seconds).
async fn key_incidents(h: &Harness, key_id: &str, n: usize) -> Vec<Value> {
    let mut incidents = Vec::new();
    for _ in 0..250 {
        incidents = h.admin_get(&format!("/admin/incidents?key={key_id}")).await["incidents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if incidents.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(incidents.len() >= n, "{incidents:#?}");
    incidents
}

async fn network_incidents(h: &Harness, alerts: usize) -> Vec<Value> {
    let mut found = Vec::new();
    for _ in 0..200 {
        let page = h.admin_get("/admin/incidents").await;
        found = page["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["subject"]["kind"] == "network")
            .cloned()
            .collect();
        if found
            .iter()
            .map(|i| i["alert_ids"].as_array().unwrap().len())
            .sum::<usize>()
            >= alerts
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_source_networks_next_alert_joins_its_stored_incident() {
    let receiver = MockUpstream::start().await.unwrap();
    let url = format!("{}/hooks/stormwall", receiver.url());
    let mut h = harness_with(move |c| {
        c.alerts.webhook_url = Some(url);
    })
    .await;
    let now = time::OffsetDateTime::now_utc();
    external(&h, network_alert(1, now)).await;
    assert_eq!(network_incidents(&h, 1).await.len(), 1);
    wait_requests(&receiver, 1).await;
    // A new process on the same store and config: its grouper starts empty.
    h.shutdown().await;
    let gw = start(
        h.config.clone(),
        Arc::clone(&h.store) as Arc<dyn Store>,
        &EventsConfig {
            flush_interval_ms: 10,
            ..Default::default()
        },
        SecretString::from(ADMIN_TOKEN),
        &env,
    )
    .await
    .unwrap();
    h.proxy = format!("http://{}", gw.proxy_addr);
    h.admin = format!("http://{}", gw.admin_addr);
    h.gw = Some(gw);
    external(&h, network_alert(2, now + time::Duration::seconds(5))).await;
    let incidents = network_incidents(&h, 2).await;
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let inc = &incidents[0];
    assert_eq!(
        inc["subject"],
        json!({"kind": "network", "value": "198.51.100.0/24"})
    );
    assert_eq!(inc["alert_ids"].as_array().unwrap().len(), 2, "{inc:#}");
    assert_eq!(inc["timeline"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.request_count(), 1, "no second notification");
    // The list filters by source network, given in any spelling of its prefix.
    for network in ["198.51.100.0/24", "198.51.100.77/24"] {
        let page = h
            .admin_get(&format!("/admin/incidents?network={network}"))
            .await;
        assert_eq!(page["incidents"].as_array().unwrap().len(), 1, "{page:#}");
        assert_eq!(page["incidents"][0]["id"], inc["id"]);
    }
    let other = h.admin_get("/admin/incidents?network=203.0.113.0/24").await;
    assert!(
        other["incidents"].as_array().unwrap().is_empty(),
        "{other:#}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_quiet_past_its_gap_is_closed_and_the_next_alert_opens_another() {
    let mut h = harness_with(|c| {
        c.alerts.incident_gap_secs = 2;
        c.detect.alert_cooldown_secs = 1;
    })
    .await;
    let (canary, canary_id) = h.key(json!({"tenant": "acme", "kind": "canary"})).await;
    assert_eq!(h.chat(&canary, "gpt-4o-mini").await.status, 401);
    wait_alerts_for(&h, &canary_id, 1).await;
    let list = |_: &Harness| format!("/admin/incidents?key={canary_id}");
    // The alert is stored before its incident: wait for the incident itself.
    let first = key_incidents(&h, &canary_id, 1).await[0].clone();
    assert_eq!(first["status"], "open", "{first:#}");
    // Quiet for longer than the gap: the episode ended, and the store says so.
    let mut status = Value::Null;
    for _ in 0..100 {
        status = h.admin_get(&list(&h)).await["incidents"][0]["status"].clone();
        if status == "closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "closed");
    // The key's next alert is a new episode: a new incident, the closed one left alone.
    assert_eq!(h.chat(&canary, "gpt-4o-mini").await.status, 401);
    wait_alerts_for(&h, &canary_id, 2).await;
    let incidents = key_incidents(&h, &canary_id, 2).await;
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    assert_eq!(incidents[0]["status"], "open");
    assert_ne!(incidents[0]["id"], first["id"]);
    assert_eq!(incidents[1]["id"], first["id"]);
    assert_eq!(incidents[1]["status"], "closed");
    h.shutdown().await;
}
