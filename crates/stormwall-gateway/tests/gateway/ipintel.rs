//! IP intelligence in the running gateway: events take their network from the data in
//! force, a changed file is picked up without a restart (polling, SIGHUP, the admin
//! endpoint), a broken file keeps the data in force, and `/readyz` names what is missing.

use super::*;

/// An iptoasn TSV mapping the tests' default client address (127.0.0.1) to `asn`.
fn loopback_tsv(asn: u32, cc: &str) -> String {
    format!("127.0.0.0\t127.0.0.255\t{asn}\t{cc}\tEXAMPLE-{asn}\n")
}

async fn asn_of_next_request(h: &Harness, key: &str, n: usize) -> (Option<u32>, Option<String>) {
    assert_eq!(h.chat(key, "gpt-4o-mini").await.status, 200);
    let events = h.events(n).await;
    let last = events.iter().max_by_key(|e| e.timestamp).expect("an event");
    (last.source_asn, last.source_country.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_ip_database_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("ip2asn.tsv");
    std::fs::write(&tsv, loopback_tsv(64510, "US")).unwrap();
    let path = tsv.clone();
    let h = harness_with(move |c| {
        c.ipdb = IpDbConfig {
            path: Some(path),
            reload_secs: 1,
            ..IpDbConfig::default()
        }
    })
    .await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    assert_eq!(
        asn_of_next_request(&h, &key, 1).await,
        (Some(64510), Some("US".into()))
    );

    // The admin endpoint: reloads at once and says what is loaded.
    std::fs::write(&tsv, loopback_tsv(64520, "DE")).unwrap();
    let r = h
        .admin_call("POST", "/admin/ipintel/reload", Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["reloaded"], true);
    assert_eq!(v["status"]["databases"][0]["format"], "iptoasn_tsv");
    assert_eq!(v["status"]["asn_lists"][0]["name"], "builtin:hosting-asns");
    assert_eq!(
        asn_of_next_request(&h, &key, 2).await,
        (Some(64520), Some("DE".into()))
    );

    // A broken file: 400 naming the file and line, the data in force stays.
    std::fs::write(&tsv, "127.0.0.0\tgarbage\n").unwrap();
    let r = h
        .admin_call("POST", "/admin/ipintel/reload", Value::Null)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("line 1"), "{}", r.text());
    assert_eq!(asn_of_next_request(&h, &key, 3).await.0, Some(64520));

    // Polling: a fixed file is picked up by itself (every `reload_secs`).
    std::fs::write(&tsv, loopback_tsv(64530, "FR")).unwrap();
    let mut n = 3;
    let mut seen = None;
    for _ in 0..100 {
        n += 1;
        seen = asn_of_next_request(&h, &key, n).await.0;
        if seen == Some(64530) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        Some(64530),
        "the poller never reloaded the changed file"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_ip_database() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("ip2asn.tsv");
    std::fs::write(&tsv, loopback_tsv(64510, "US")).unwrap();
    let path = tsv.clone();
    // Polling off: only the signal can reload.
    let h = harness_with(move |c| {
        c.ipdb = IpDbConfig {
            path: Some(path),
            reload_secs: 0,
            ..IpDbConfig::default()
        }
    })
    .await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    assert_eq!(asn_of_next_request(&h, &key, 1).await.0, Some(64510));
    std::fs::write(&tsv, loopback_tsv(64540, "JP")).unwrap();
    // Give the poller a chance it must not take.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(asn_of_next_request(&h, &key, 2).await.0, Some(64510));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut n = 2;
    let mut seen = None;
    for _ in 0..100 {
        n += 1;
        seen = asn_of_next_request(&h, &key, n).await.0;
        if seen == Some(64540) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(64540), "SIGHUP did not reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_ip_database_readyz_says_what_is_missing() {
    let h = harness_with(|c| c.ipdb = IpDbConfig::default()).await;
    let r = http_request("GET", &format!("{}/readyz", h.admin), &[], "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.starts_with("ready\n"), "{body}");
    for needle in [
        "missing: no ASN database",
        "/16 prefix",
        "missing: no country database",
        "missing: no Tor exit list",
        "missing: no VPN list",
    ] {
        assert!(body.contains(needle), "{needle} not in {body}");
    }
    assert!(
        !body.contains("no hosting ASN list"),
        "the shipped list is on by default"
    );
    // Requests are still served and recorded, without network fields.
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    assert_eq!(asn_of_next_request(&h, &key, 1).await, (None, None));
}
