//! Follow mode: cloud-log folders watched by a running gateway. Records written into the
//! folders (JSON lines as they grow, whole CloudTrail-style containers) reach the
//! detectors; alerts land in the same store as gateway traffic's, with the revoke command
//! as a recommendation; a restart neither loses records nor raises an alert twice.

use std::io::Write as _;

use super::*;
use stormwall_gateway::control::cloud_logs::{CloudLogsConfig, LogSourceConfig};

const KEY: &str = "AKIAEXAMPLESTOLEN001";

fn ts(minutes_ago: i64) -> String {
    stormwall_types::timefmt::format(
        time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes_ago),
    )
}

/// A CloudTrail record of the stolen long-lived key.
fn trail(id: &str, name: &str, minutes_ago: i64, extra: &str) -> String {
    format!(
        r#"{{"eventTime":"{}","eventSource":"bedrock.amazonaws.com","eventName":"{name}","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.23","userAgent":"python-requests/2.31","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/ci-deploy","accountId":"111122223333","accessKeyId":"{KEY}"}},"eventID":"{id}"{extra}}}"#,
        ts(minutes_ago)
    )
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A watched folder: `name` (or the folder's own name), its source kind, every file.
fn watched(name: Option<&str>, dir: std::path::PathBuf, source: &str) -> LogSourceConfig {
    LogSourceConfig {
        name: name.map(Into::into),
        dir,
        source: source.into(),
        glob: None,
    }
}

/// Follow mode that polls every 100 ms and settles and checkpoints every second, its state
/// in `state`.
fn quick_follow(state: std::path::PathBuf) -> CloudLogsConfig {
    CloudLogsConfig {
        state_file: Some(state),
        poll_ms: 100,
        settle_secs: 1,
        checkpoint_secs: 1,
        ..CloudLogsConfig::default()
    }
}

/// Waits until the store holds at least `n` cloud usage events; returns them by id.
async fn cloud_events(h: &Harness, n: usize) -> Vec<UsageEvent> {
    let mut got = Vec::new();
    for _ in 0..300 {
        got = h
            .store
            .query_events(&EventQuery::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.cloud.is_some())
            .collect();
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got.sort_by(|a, b| a.id.cmp(&b.id));
    got
}

fn subject<'a>(alert: &'a Value, kind: &str) -> Option<&'a str> {
    alert["subjects"]
        .as_array()?
        .iter()
        .find(|s| s["kind"] == kind)?["value"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_logs_in_watched_folders_raise_stored_alerts_once_across_a_restart() {
    let logs = tempfile::tempdir().unwrap();
    let aws = logs.path().join("aws");
    let azure = logs.path().join("azure");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::create_dir_all(&azure).unwrap();
    let state = logs.path().join("follow-state.json");
    let sigma = concat!(env!("CARGO_MANIFEST_DIR"), "/../stormwall-cloudlogs/sigma");
    let (aws2, azure2, state2) = (aws.clone(), azure.clone(), state.clone());
    let mut h = harness_with(move |c| {
        c.logs = vec![
            LogSourceConfig {
                name: Some("aws".into()),
                dir: aws2,
                source: "cloudtrail".into(),
                glob: Some("*.jsonl".into()),
            },
            watched(None, azure2, "auto"),
        ];
        c.cloud_logs = CloudLogsConfig {
            sigma_dir: Some(sigma.into()),
            ..quick_follow(state2)
        };
    })
    .await;

    // The LLMjacking preamble through a long-lived key, the invocation still being written.
    let file = aws.join("trail.jsonl");
    append(
        &file,
        &format!(
            "{}\n{}\n{}\n{}",
            trail("e1", "PutUseCaseForModelAccess", 30, ""),
            trail("e2", "CreateFoundationModelAgreement", 29, ""),
            trail("e3", "PutFoundationModelEntitlement", 28, ""),
            &trail(
                "e4",
                "InvokeModel",
                20,
                r#","requestParameters":{"modelId":"anthropic.claude-3-sonnet"}"#
            )[..40],
        ),
    );
    let v5 = h.wait_alerts("?detector=V5", 1).await;
    let high = &v5[v5.len() - 1];
    assert_eq!(high["severity"], "high", "{high:#}");
    assert_eq!(subject(high, "principal"), Some(&*format!("aws:{KEY}")));
    let cmd = subject(high, "recommended_command").expect("a recommendation on the alert");
    assert!(
        cmd.starts_with(&format!(
            "aws iam update-access-key --user-name ci-deploy --access-key-id {KEY} --status Inactive"
        )),
        "{cmd}"
    );
    // The shipped Sigma rule for the same step is an alert too, with its rule.
    let s1 = h.wait_alerts("?detector=S1", 1).await;
    assert!(
        s1.iter()
            .any(|a| subject(a, "sigma_title").is_some_and(|t| t.contains("access key"))),
        "{s1:#?}"
    );
    // Stormwall holds no AWS credentials: the action is a recommendation in the audit log.
    let audit = h.admin_get(&format!("/admin/audit?target=aws:{KEY}")).await;
    let rec = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "cloud.revoke_recommended")
        .unwrap_or_else(|| panic!("{audit:#}"));
    assert!(rec["detail"]["command"].as_str().unwrap().contains(KEY));

    // The partial line completes: the invocation finishes the preamble (critical).
    append(
        &file,
        &format!(
            "{}\n",
            &trail(
                "e4",
                "InvokeModel",
                20,
                r#","requestParameters":{"modelId":"anthropic.claude-3-sonnet"}"#
            )[40..]
        ),
    );
    for _ in 0..300 {
        if h.alerts("?detector=V5")
            .await
            .iter()
            .any(|a| a["severity"] == "critical")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v5 = h.alerts("?detector=V5").await;
    assert!(v5.iter().any(|a| a["severity"] == "critical"), "{v5:#?}");

    // An Azure Activity export arrives as one pretty-printed container: a content filter
    // switched off is X2, written in two steps (incomplete JSON waits).
    let activity = format!(
        r#"{{
  "records": [
    {{"time":"{}","resourceId":"/SUBSCRIPTIONS/S1/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COGNITIVESERVICES/ACCOUNTS/CONTOSO/RAIPOLICIES/LENIENT","operationName":"MICROSOFT.COGNITIVESERVICES/ACCOUNTS/RAIPOLICIES/WRITE","category":"Administrative","resultType":"Success","callerIpAddress":"198.51.100.99","identity":{{"claims":{{"http://schemas.microsoft.com/identity/claims/objectidentifier":"22222222-aaaa-bbbb-cccc-000000000002"}}}},"properties":{{"requestbody":"{{\"properties\":{{\"contentFilters\":[{{\"name\":\"sexual\",\"enabled\":false,\"blocking\":false,\"source\":\"Prompt\"}}]}}}}"}}}}
  ]
}}
"#,
        ts(15)
    );
    let az = azure.join("PT1H.json");
    append(&az, &activity[..60]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&az, &activity[60..]);
    let x2 = h.wait_alerts("?detector=X2", 1).await;
    assert_eq!(x2[0]["severity"], "high", "{x2:#?}");

    // A bad record is counted with its file and line, never fatal.
    append(&file, "this is not json\n");
    append(
        &file,
        &format!("{}\n", trail("e5", "ListFoundationModels", 19, "")),
    );
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
        if metrics.contains("stormwall_cloud_logs_bad_records_total{source=\"aws\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains("stormwall_cloud_logs_bad_records_total{source=\"aws\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 5"));
    assert!(metrics.contains("stormwall_cloud_logs_records_total{source=\"azure\"} 1"));
    assert!(metrics.contains("stormwall_cloud_logs_lag_seconds{source=\"aws\"}"));
    let ready = h.admin_call("GET", "/readyz", Value::Null).await.text();
    assert!(
        ready.contains("cloud logs aws: followed by this replica (")
            && ready.contains("), 1 files, 5 records, 1 bad"),
        "{ready}"
    );
    // The usage records (the invocation and the listing) are in the event store, where
    // investigation and the console read them, under ids of their source and record.
    let stored = cloud_events(&h, 2).await;
    assert_eq!(
        stored.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["aws.cloudtrail:e4", "aws.cloudtrail:e5"]
    );
    let invoke = &stored[0];
    assert_eq!(invoke.model.as_deref(), Some("anthropic.claude-3-sonnet"));
    assert_eq!(
        invoke.cloud.as_deref().map(|c| c.principal.id.as_str()),
        Some(KEY)
    );
    let v5_critical = h.alerts("?detector=V5").await;
    assert!(
        v5_critical
            .iter()
            .any(|a| a["evidence"][0] == "aws.cloudtrail:e4"),
        "alert evidence names the stored event: {v5_critical:#?}"
    );

    // Restart: nothing is judged twice, and what arrives meanwhile is not lost.
    let before: Vec<String> = h
        .alerts("")
        .await
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    h.shutdown().await;
    assert!(state.exists(), "the checkpoint is written on shutdown");
    append(
        &file,
        &format!(
            "{}\n",
            trail("e6", "DeleteModelInvocationLoggingConfiguration", 10, "")
        ),
    );
    h.restart().await;
    let x1 = h.wait_alerts("?detector=X1", 1).await;
    assert_eq!(x1.len(), 1, "{x1:#?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<String> = h
        .alerts("")
        .await
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    let mut unique = after.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), after.len(), "no alert stored twice");
    let new: Vec<&String> = after.iter().filter(|id| !before.contains(id)).collect();
    assert!(
        !new.is_empty() && new.iter().all(|id| id.contains("e6")),
        "only the record written during the restart raised new alerts: {new:?}"
    );
    let metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
    assert!(
        metrics.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 1"),
        "after the restart only the new record was read: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_usage_events_are_stored_once_when_read_again_after_lost_cursors() {
    let logs = tempfile::tempdir().unwrap();
    let aws = logs.path().join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    let state = logs.path().join("follow-state.json");
    let (aws2, state2) = (aws.clone(), state.clone());
    let mut h = harness_with(move |c| {
        c.logs = vec![watched(Some("aws"), aws2, "auto")];
        c.cloud_logs = quick_follow(state2);
    })
    .await;
    let model = r#","requestParameters":{"modelId":"anthropic.claude-3-haiku"}"#;
    let lines: String = (1..=3)
        .map(|i| {
            format!(
                "{}\n",
                trail(&format!("inv{i}"), "InvokeModel", 30 - i, model)
            )
        })
        .collect();
    append(&aws.join("trail.jsonl"), &lines);
    let first = cloud_events(&h, 3).await;
    let ids: Vec<&str> = first.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "aws.cloudtrail:inv1",
            "aws.cloudtrail:inv2",
            "aws.cloudtrail:inv3"
        ]
    );
    assert!(first.iter().all(|e| e.dataset == "aws.cloudtrail"));

    // The local checkpoint is lost: the cursors saved with the source's lease in the store
    // (for the next holder) still say where reading stands, so only a new record is read.
    h.shutdown().await;
    std::fs::remove_file(&state).unwrap();
    h.restart().await;
    append(
        &aws.join("trail.jsonl"),
        &format!("{}\n", trail("inv4", "InvokeModel", 20, model)),
    );
    assert_eq!(cloud_events(&h, 4).await.len(), 4);
    let metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
    assert!(
        metrics.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 1"),
        "only the new record was read: {metrics}"
    );

    // Both lost (the source renamed: a new lease, with nothing handed over): the restart
    // reads every record again. The event store keeps one copy of each, because an
    // event's id comes from its source and record.
    h.shutdown().await;
    std::fs::remove_file(&state).unwrap();
    h.config.logs[0].name = Some("aws-renamed".into());
    h.restart().await;
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
        if metrics.contains("stormwall_cloud_logs_events_stored_total{source=\"aws-renamed\"} 4") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains("stormwall_cloud_logs_records_total{source=\"aws-renamed\"} 4"),
        "the records were read again: {metrics}"
    );
    assert!(
        metrics.contains("stormwall_cloud_logs_events_stored_total{source=\"aws-renamed\"} 4"),
        "{metrics}"
    );
    let again = cloud_events(&h, 4).await;
    assert_eq!(
        again.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [&ids[..], &["aws.cloudtrail:inv4"]].concat(),
        "no event stored twice"
    );
    assert_eq!(h.store.count_events().await.unwrap(), 4);
}

/// Two replicas on one PostgreSQL follow the same folder: one holds the source's lease and
/// reads every record, the other reads none and says who holds it. When the holder loses
/// PostgreSQL (as a replica that died would stop renewing), it stops reading, and the other
/// takes over from the cursors saved with the lease — no record read twice, none skipped.
/// Runs when `STORMWALL_TEST_POSTGRES_URL` is set, and then fails if PostgreSQL is
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_follows_a_source_and_another_takes_over_when_it_dies_on_postgres() {
    use stormwall_store::{LeaseStore as _, PostgresConfig, PostgresStore};
    let Some(pg_url) = std::env::var("STORMWALL_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        eprintln!("skipped: STORMWALL_TEST_POSTGRES_URL is not set");
        return;
    };
    let cfg: tokio_postgres::Config = pg_url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the PostgreSQL test URL must be TCP"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let relay = stormwall_testkit::TcpRelay::start(format!("{host}:{port}"))
        .await
        .unwrap();
    let via = pg_url.replacen(&format!("{host}:{port}"), &relay.addr.to_string(), 1);
    assert_ne!(via, pg_url, "the test URL must name host:port explicitly");
    let schema = format!(
        "swcl_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let open = |url: &str| {
        let mut pg = PostgresConfig::from_url(url);
        pg.schema = Some(schema.clone());
        pg.pool_size = 4;
        async move {
            Arc::new(PostgresStore::open(&pg).await.unwrap_or_else(|e| {
                panic!("STORMWALL_TEST_POSTGRES_URL is set but PostgreSQL is unusable: {e}")
            }))
        }
    };
    let store_b = open(&pg_url).await;
    let store_a = open(&via).await;

    let logs = tempfile::tempdir().unwrap();
    let aws = logs.path().join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let config = |replica: &str| {
        let mut c = GatewayConfig {
            server: ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                admin_listen: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            },
            ipdb: test_ipdb(),
            upstreams: vec![UpstreamConfig::Mock {
                name: "builtin".into(),
                models: vec!["builtin-model".into()],
            }],
            ..Default::default()
        };
        c.logs = vec![watched(Some("aws"), aws.clone(), "cloudtrail")];
        c.cloud_logs = CloudLogsConfig {
            lease_secs: 2,
            ..quick_follow(logs.path().join(format!("state-{replica}.json")))
        };
        c
    };
    let events = EventsConfig {
        flush_interval_ms: 10,
        ..Default::default()
    };
    let start_on = |store: Arc<PostgresStore>, c: GatewayConfig| {
        let events = events.clone();
        async move {
            start(
                c,
                store as Arc<dyn Store>,
                &events,
                SecretString::from(ADMIN_TOKEN),
                &env,
            )
            .await
            .unwrap()
        }
    };
    let get = |gw: &RunningGateway, path: &str| {
        let url = format!("http://{}{path}", gw.admin_addr);
        async move {
            http_request("GET", &url, &[], "", None)
                .await
                .unwrap()
                .text()
        }
    };
    // Waits until `path` of `gw` contains `want`; returns the last text.
    async fn wait_for<F, Fut>(read: F, want: &str) -> String
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let mut text = String::new();
        for _ in 0..400 {
            text = read().await;
            if text.contains(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        text
    }
    let stored = |n: usize| {
        let store = Arc::clone(&store_b);
        async move {
            for _ in 0..400 {
                let got = store.count_events().await.unwrap();
                if got >= n as u64 {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            store.count_events().await.unwrap()
        }
    };
    let model = r#","requestParameters":{"modelId":"anthropic.claude-3-haiku"}"#;
    let write = |from: u32, to: u32| {
        let lines: String = (from..=to)
            .map(|i| {
                format!(
                    "{}\n",
                    trail(&format!("ha{i}"), "InvokeModel", 40 - i64::from(i), model)
                )
            })
            .collect();
        append(&aws.join("trail.jsonl"), &lines);
    };

    let a = start_on(Arc::clone(&store_a), config("a")).await;
    let ready_a = wait_for(
        || get(&a, "/readyz"),
        "cloud logs aws: followed by this replica",
    )
    .await;
    assert!(
        ready_a.contains("cloud logs aws: followed by this replica"),
        "{ready_a}"
    );
    let lease = store_b
        .acquire_lease("cloud-logs:aws", "probe", Duration::from_secs(1))
        .await
        .unwrap();
    let name_a = lease.holder.clone();
    assert!(ready_a.contains(&format!("({name_a})")), "{ready_a}");
    let b = start_on(Arc::clone(&store_b), config("b")).await;
    let ready_b = wait_for(|| get(&b, "/readyz"), &format!("followed by {name_a}")).await;
    assert!(
        ready_b.contains(&format!(
            "cloud logs aws: followed by {name_a}, not this replica"
        )),
        "{ready_b}"
    );

    // Every record is read by the holder alone.
    write(1, 3);
    assert_eq!(stored(3).await, 3);
    let m = wait_for(
        || get(&a, "/metrics"),
        "stormwall_cloud_logs_records_total{source=\"aws\"} 3",
    )
    .await;
    assert!(
        m.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 3"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "stormwall_cloud_logs_lease_held{{source=\"aws\",holder=\"{name_a}\"}} 1"
        )),
        "{m}"
    );
    let m = get(&b, "/metrics").await;
    assert!(
        m.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 0"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "stormwall_cloud_logs_lease_held{{source=\"aws\",holder=\"{name_a}\"}} 0"
        )),
        "{m}"
    );
    // The first half of a kill chain, read by the holder: the stolen key enabled model
    // access (the LLMjacking preamble; V5 high) an hour before the invocations B reads
    // after the take-over (more than an hour: the store keeps one V5 alert per principal
    // and hour).
    let preamble: String = [
        "PutUseCaseForModelAccess",
        "CreateFoundationModelAgreement",
        "PutFoundationModelEntitlement",
    ]
    .iter()
    .enumerate()
    .map(|(i, op)| format!("{}\n", trail(&format!("pre{i}"), op, 100, "")))
    .collect();
    append(&aws.join("trail.jsonl"), &preamble);
    let m = wait_for(
        || get(&a, "/metrics"),
        "stormwall_cloud_logs_records_total{source=\"aws\"} 6",
    )
    .await;
    assert!(
        m.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 6"),
        "{m}"
    );
    // The holder's cursors and detector state reach the store with its lease
    // (checkpoint_secs = 1).
    let mut saved = None;
    for _ in 0..200 {
        saved = store_b.lease_state("cloud-logs:aws").await.unwrap();
        if saved.as_deref().is_some_and(|s| {
            s.contains("trail.jsonl") && s.contains("\"line\":6") && s.contains("\"run\":")
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved = saved.unwrap_or_default();
    assert!(
        saved.contains("\"line\":6") && saved.contains("\"run\":"),
        "{saved}"
    );

    // The holder loses PostgreSQL: it cannot renew, stops reading, and B takes over.
    relay.cut();
    let ready_b = wait_for(
        || get(&b, "/readyz"),
        "cloud logs aws: followed by this replica",
    )
    .await;
    assert!(
        ready_b.contains("cloud logs aws: followed by this replica"),
        "{ready_b}"
    );
    let ready_a = get(&a, "/readyz").await;
    assert!(
        !ready_a.contains("followed by this replica"),
        "A stopped: {ready_a}"
    );
    write(4, 5);
    assert_eq!(stored(5).await, 5);
    let m = wait_for(
        || get(&b, "/metrics"),
        "stormwall_cloud_logs_records_total{source=\"aws\"} 2",
    )
    .await;
    assert!(
        m.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 2"),
        "B read only the records A had not: {m}"
    );
    // B continues A's detector state: the invocation completes the preamble A read, which
    // is critical (V5) — judged alone, an invocation by a long-lived key is only low (E4).
    let critical = |alerts: &[StoredAlert]| {
        alerts.iter().any(|a| {
            a.alert.detector == stormwall_types::DetectorId::V5
                && a.alert.severity == stormwall_types::Severity::Critical
                && a.alert.evidence.iter().any(|e| e.ends_with(":ha4"))
        })
    };
    let mut alerts = Vec::new();
    for _ in 0..200 {
        alerts = store_b.list_alerts(&AlertQuery::default()).await.unwrap();
        if critical(&alerts) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: Vec<_> = alerts
        .iter()
        .map(|a| (a.alert.detector, a.alert.severity, a.alert.evidence.clone()))
        .collect();
    assert!(
        critical(&alerts),
        "no critical V5 on B's first invocation: {seen:?}"
    );

    // A back on PostgreSQL finds B holding the source and reads nothing.
    relay.restore();
    let name_b = store_b
        .acquire_lease("cloud-logs:aws", "probe", Duration::from_secs(1))
        .await
        .unwrap()
        .holder;
    assert_ne!(name_b, name_a);
    let ready_a = wait_for(|| get(&a, "/readyz"), &format!("followed by {name_b}")).await;
    assert!(
        ready_a.contains(&format!(
            "cloud logs aws: followed by {name_b}, not this replica"
        )),
        "{ready_a}"
    );
    write(6, 6);
    assert_eq!(stored(6).await, 6);
    let m = wait_for(
        || get(&b, "/metrics"),
        "stormwall_cloud_logs_records_total{source=\"aws\"} 3",
    )
    .await;
    assert!(
        m.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 3"),
        "{m}"
    );
    let m = get(&a, "/metrics").await;
    assert!(
        m.contains("stormwall_cloud_logs_records_total{source=\"aws\"} 6"),
        "{m}"
    );
    assert_eq!(store_b.count_events().await.unwrap(), 6);

    a.shutdown().await;
    b.shutdown().await;
    drop((store_a, store_b));
    let (client, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    drop(upstream);
}

/// An Azure Activity (ARM) record of `listKeys` or `regenerateKey` on the account, by an
/// Entra identity.
fn activity(correlation: &str, operation: &str, object_id: &str, minutes_ago: i64) -> String {
    format!(
        r#"{{"time":"{}","resourceId":"/SUBSCRIPTIONS/00000000-1111-2222-3333-444444444444/RESOURCEGROUPS/RG-AI/PROVIDERS/MICROSOFT.COGNITIVESERVICES/ACCOUNTS/CONTOSO-AOAI","operationName":"MICROSOFT.COGNITIVESERVICES/ACCOUNTS/{operation}/ACTION","category":"Administrative","resultType":"Success","callerIpAddress":"203.0.113.50","correlationId":"{correlation}","identity":{{"claims":{{"http://schemas.microsoft.com/identity/claims/objectidentifier":"{object_id}","http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn":"ops@example.com"}}}},"properties":{{"statusCode":"OK"}}}}"#,
        ts(minutes_ago)
    )
}

/// Waits until the metric line reads exactly `want`; returns the metrics text.
async fn wait_metric(h: &Harness, want: &str) -> String {
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = h.admin_call("GET", "/metrics", Value::Null).await.text();
        if metrics.lines().any(|l| l == want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metrics
}

fn control_ids(page: &Value) -> Vec<String> {
    page["control_events"]
        .as_array()
        .unwrap_or_else(|| panic!("{page:#}"))
        .iter()
        .map(|e| e["event.id"].as_str().unwrap().to_owned())
        .collect()
}

/// Management calls read in follow mode are stored and listed by `/admin/control-events`
/// (filtered and paged like `/admin/events`), once each — also when a restart that lost
/// every cursor reads the same file again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_control_events_are_listed_once_by_the_admin_api_across_a_restart() {
    let logs = tempfile::tempdir().unwrap();
    let azure = logs.path().join("azure");
    std::fs::create_dir_all(&azure).unwrap();
    let state = logs.path().join("follow-state.json");
    let (azure2, state2) = (azure.clone(), state.clone());
    let mut h = harness_with(move |c| {
        c.logs = vec![watched(Some("azure"), azure2, "auto")];
        c.cloud_logs = quick_follow(state2);
    })
    .await;
    let alice = "11111111-aaaa-bbbb-cccc-000000000001";
    let bob = "22222222-aaaa-bbbb-cccc-000000000002";
    append(
        &azure.join("PT1H.json"),
        &format!(
            "{}\n{}\n",
            activity(
                "c0000000-0000-0000-0000-000000000001",
                "LISTKEYS",
                alice,
                30
            ),
            activity(
                "c0000000-0000-0000-0000-000000000002",
                "REGENERATEKEY",
                bob,
                20
            ),
        ),
    );
    let metrics = wait_metric(
        &h,
        "stormwall_cloud_logs_control_events_stored_total{source=\"azure\"} 2",
    )
    .await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "stormwall_cloud_logs_control_events_stored_total{source=\"azure\"} 2"),
        "{metrics}"
    );

    let all = h.admin_get("/admin/control-events").await;
    assert_eq!(all["next_after"], Value::Null, "{all:#}");
    let events = all["control_events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{all:#}");
    let list = &events[0];
    assert_eq!(list["event.action"], "list_keys", "{list:#}");
    assert_eq!(list["event.dataset"], "azure.activity");
    assert!(
        list["event.id"]
            .as_str()
            .unwrap()
            .starts_with("azure.activity:"),
        "{list:#}"
    );
    assert_eq!(list["source.ip"], "203.0.113.50");
    let principal = list["cloud"]["principal"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(principal.contains(alice), "{principal}");
    let account = list["cloud"]["principal"]["account"]
        .as_str()
        .expect("the subscription is the principal's account")
        .to_owned();
    assert_eq!(events[1]["event.action"], "regenerate_key");
    // Control events are not usage events.
    let usage = h.admin_get("/admin/events").await;
    assert_eq!(usage["events"].as_array().unwrap().len(), 0, "{usage:#}");

    // "Who called listKeys on this account since then": every filter narrows.
    let since = urlencode(&ts(40));
    let acct = urlencode(&account);
    let found = h
        .admin_get(&format!(
            "/admin/control-events?action=list_keys&account={acct}&since={since}"
        ))
        .await;
    assert_eq!(control_ids(&found), [list["event.id"].as_str().unwrap()]);
    let by_principal = h
        .admin_get(&format!(
            "/admin/control-events?principal={}",
            urlencode(&principal)
        ))
        .await;
    assert_eq!(control_ids(&by_principal), control_ids(&found));
    let bob_events = h
        .admin_get("/admin/control-events?dataset=azure.activity&action=regenerate_key")
        .await;
    assert_eq!(control_ids(&bob_events).len(), 1);
    let none = h
        .admin_get(&format!(
            "/admin/control-events?until={}",
            urlencode(&ts(35))
        ))
        .await;
    assert!(control_ids(&none).is_empty(), "{none:#}");
    let none = h
        .admin_get("/admin/control-events?dataset=aws.cloudtrail")
        .await;
    assert!(control_ids(&none).is_empty(), "{none:#}");
    // The key id alerts name the principal by finds its calls too.
    let p: stormwall_types::Principal =
        serde_json::from_value(list["cloud"]["principal"].clone()).unwrap();
    let by_key = h
        .admin_get(&format!("/admin/control-events?key={}", p.key_id()))
        .await;
    assert_eq!(control_ids(&by_key), control_ids(&found));

    // Paging as for events: a full page gives the cursor to the next.
    let first = h.admin_get("/admin/control-events?limit=1").await;
    let cursor = first["next_after"]
        .as_str()
        .expect("a full page has a cursor");
    assert_eq!(control_ids(&first), [cursor]);
    let second = h
        .admin_get(&format!("/admin/control-events?limit=1&after={cursor}"))
        .await;
    assert_eq!(
        control_ids(&second),
        [events[1]["event.id"].as_str().unwrap()]
    );

    // The same checks and limits as /admin/events.
    for bad in [
        "limit=0",
        "limit=10001",
        "since=yesterday",
        "until=2025-13-01",
        "action=list_everything",
        "key=not-a-key-id",
        "after=has%20space",
        "principal=",
    ] {
        let r = h
            .admin_call("GET", &format!("/admin/control-events?{bad}"), Value::Null)
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = h
        .admin_call("POST", "/admin/control-events", Value::Null)
        .await;
    assert_eq!(r.status, 405);
    let r = http_request(
        "GET",
        &format!("{}/admin/control-events", h.admin),
        &[],
        String::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    // Every cursor lost (the source renamed: a new lease, nothing handed over; the
    // checkpoint deleted): the restart reads the file again, and each call is still listed
    // once, because its id comes from the source and the record.
    h.shutdown().await;
    std::fs::remove_file(&state).unwrap();
    h.config.logs[0].name = Some("azure-renamed".into());
    h.restart().await;
    let metrics = wait_metric(
        &h,
        "stormwall_cloud_logs_control_events_stored_total{source=\"azure-renamed\"} 2",
    )
    .await;
    assert!(
        metrics
            .lines()
            .any(|l| l
                == "stormwall_cloud_logs_control_events_stored_total{source=\"azure-renamed\"} 2"),
        "the records were read and written again: {metrics}"
    );
    let again = h.admin_get("/admin/control-events").await;
    assert_eq!(control_ids(&again), control_ids(&all), "none stored twice");
    let listed = h.admin_get("/admin/control-events?action=list_keys").await;
    assert_eq!(control_ids(&listed).len(), 1, "{listed:#}");
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_expired_usage_and_control_events_and_audits_the_sweep() {
    use stormwall_gateway::control::retention::{Retention, Swept, sweep};
    use stormwall_store::ControlEventStore as _;
    let h = harness().await;
    let day = 24 * 60;
    let text = [
        trail("old-use", "InvokeModel", 50 * day, ""),
        trail("mid-use", "InvokeModel", 20 * day, ""),
        trail("new-use", "InvokeModel", 5, ""),
        trail("old-ctl", "PutUseCaseForModelAccess", 50 * day, ""),
        trail("mid-ctl", "PutUseCaseForModelAccess", 20 * day, ""),
        trail("new-ctl", "PutUseCaseForModelAccess", 5, ""),
    ]
    .join("\n");
    let parsed = stormwall_cloudlogs::parse_bytes("t.jsonl", text.as_bytes(), None);
    assert!(parsed.bad.is_empty(), "{:?}", parsed.bad);
    let (mut uses, mut controls) = (Vec::new(), Vec::new());
    for r in parsed.records {
        match r {
            stormwall_cloudlogs::Record::Usage(e) => uses.push(e),
            stormwall_cloudlogs::Record::Control(c) => controls.push(c),
        }
    }
    assert_eq!((uses.len(), controls.len()), (3, 3));
    h.store.insert_events(&uses).await.unwrap();
    h.store.insert_control_events(&controls).await.unwrap();

    let control = &h.gw.as_ref().unwrap().control;
    let r = Retention {
        events_days: 40,
        control_days: 10,
    };
    let now = time::OffsetDateTime::now_utc();
    let swept = sweep(control, r, now).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            events: 1,
            control_events: 2
        }
    );
    let mut left: Vec<String> = h
        .store
        .query_events(&EventQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    left.sort();
    assert_eq!(left, ["mid-use", "new-use"]);
    let left: Vec<String> = h
        .store
        .query_control_events(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["new-ctl"]);
    // Nothing more is due: a second sweep deletes nothing and audits nothing.
    assert_eq!(sweep(control, r, now).await.unwrap(), Swept::default());
    let audit = h.store.list_audit(&AuditQuery::default()).await.unwrap();
    let expired: Vec<_> = audit
        .iter()
        .filter(|a| a.entry.action == "events.expire")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].entry.actor, "retention");
    assert_eq!(expired[0].entry.detail["events"], 1);
    assert_eq!(expired[0].entry.detail["control_events"], 2);
    assert_eq!(expired[0].entry.detail["events_retention_days"], 40);
    let m = http_request("GET", &format!("{}/metrics", h.admin), &[], "", None)
        .await
        .unwrap();
    let text = m.text();
    for needle in [
        "stormwall_retention_deleted_total{table=\"events\"} 1",
        "stormwall_retention_deleted_total{table=\"control_events\"} 2",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    // A usage-event retention shorter than a month is refused at start (budgets read this
    // month's events).
    let store = SqliteStore::open(&h._dir.path().join("other.db"))
        .await
        .unwrap();
    let bad = EventsConfig {
        retention_days: 7,
        ..Default::default()
    };
    let err = start(
        h.config.clone(),
        Arc::new(store) as Arc<dyn Store>,
        &bad,
        SecretString::from(ADMIN_TOKEN),
        &env,
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("retention_days"), "{err}");
}
