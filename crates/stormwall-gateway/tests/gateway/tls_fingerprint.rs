//! TLS on the proxy listener: a real rustls client over a real socket. The ClientHello's
//! fingerprint is recorded on every event of the connection; two client configurations give
//! two fingerprints, the same configuration gives the same one on every connection, and the
//! investigation graph holds them as `tls` nodes linked to the keys that used them.

use super::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gateway/tls");

fn client_config(
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(s) = suites {
        provider.cipher_suites = s;
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(format!("{DIR}/ca.pem")).unwrap())
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// One connection, `n` chat requests on it (HTTP/1.1 keep-alive); the statuses.
// The connection's driver is awaited below; the gateway's small replies are read under a
// timeout.
#[allow(clippy::disallowed_methods)]
async fn chat_over_tls(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    key: &str,
    n: usize,
) -> Vec<u16> {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the gateway");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut statuses = Vec::new();
    for _ in 0..n {
        let req = http::Request::post("/v1/chat/completions")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(chat_body(
                "gpt-4o-mini",
                false,
            ))))
            .unwrap();
        // After a response, the connection takes a moment to accept the next request.
        send.ready().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("no answer over TLS")
            .unwrap();
        statuses.push(resp.status().as_u16());
        tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .unwrap()
            .unwrap();
    }
    drop(send);
    let _ = driver.await;
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // the HTTP/2 connection's driver is aborted at the end
async fn the_gateway_terminates_tls_and_records_each_clients_hello_fingerprint() {
    let mut h = harness_with(|c| {
        c.server.tls_cert_file = Some(format!("{DIR}/cert.pem").into());
        c.server.tls_key_file = Some(format!("{DIR}/key.pem").into());
    })
    .await;
    let addr = h.gw.as_ref().unwrap().proxy_addr;
    let (key_a, id_a) = h.key(json!({"tenant": "acme"})).await;
    let (key_b, id_b) = h.key(json!({"tenant": "globex"})).await;
    // Client A: the ring provider's defaults, ALPN h2 and http/1.1 (the server picks h2
    // only when asked; this client speaks HTTP/1.1, so it offers http/1.1 first).
    let a = client_config(None, &[b"http/1.1", b"h2"]);
    // Client B: one TLS 1.3 suite, one group, no ALPN.
    let b = client_config(
        Some(vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ]),
        &[],
    );
    assert_eq!(
        chat_over_tls(addr, Arc::clone(&a), &key_a, 2).await,
        [200, 200]
    );
    assert_eq!(chat_over_tls(addr, Arc::clone(&a), &key_a, 1).await, [200]);
    assert_eq!(chat_over_tls(addr, b, &key_b, 2).await, [200, 200]);

    let events = h.events(5).await;
    let fp = |id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.key_id.as_ref().map(KeyId::as_str) == Some(id))
            .map(|e| {
                e.tls_fingerprint
                    .clone()
                    .expect("a TLS event without fingerprint")
            })
            .collect()
    };
    let (fa, fb) = (fp(&id_a), fp(&id_b));
    assert_eq!(fa.len(), 3);
    assert_eq!(fb.len(), 2);
    // The same client configuration: the same fingerprint on both connections.
    assert!(fa.iter().all(|f| f == &fa[0]), "{fa:?}");
    assert!(fb.iter().all(|f| f == &fb[0]), "{fb:?}");
    assert_ne!(fa[0], fb[0]);
    // What part a covers: TLS 1.3 offered, a server name sent, the suite and group counts,
    // the first ALPN protocol's first and last characters (`http/1.1`: `h1`; none: `00`).
    assert!(fa[0].starts_with("t13d"), "{}", fa[0]);
    assert_eq!(&fa[0][8..10], "h1", "{}", fa[0]);
    assert!(fb[0].starts_with("t13d010100_"), "{}", fb[0]);
    // Served as the event field.
    let page = h.admin_get(&format!("/admin/events?key={id_b}")).await;
    assert_eq!(page["events"][0]["tls.client.fingerprint"], fb[0].as_str());

    // The investigation graph: one `tls` node per fingerprint.
    let inv = h
        .admin_get("/admin/investigation?include_personal_data=true&analyst=tls-test")
        .await;
    assert_eq!(inv["graph"]["nodes_by_kind"]["tls"], 2, "{inv:#}");

    // HTTP/2 over TLS (ALPN h2): served, and the ALPN part of the fingerprint says so.
    let c = client_config(None, &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(c)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{}/v1/models", addr.port()))
        .header("authorization", format!("Bearer {key_b}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    drop((send, resp));
    driver.abort();
    let events = h.events(6).await;
    let h2 = events
        .iter()
        .find(|e| e.path == "/v1/models")
        .and_then(|e| e.tls_fingerprint.clone())
        .expect("the HTTP/2 request's event has a fingerprint");
    assert_eq!(&h2[8..10], "h2", "{h2}");
    assert_eq!(
        &h2[10..],
        &fa[0][10..],
        "same suites and groups as client A"
    );

    // Plain HTTP is refused on the TLS listener (no request reaches the pipeline).
    let r = http_request(
        "GET",
        &format!("http://{addr}/v1/models"),
        &[],
        String::new(),
        None,
    )
    .await;
    assert!(r.is_err() || r.unwrap().status != 200);
    h.shutdown().await;
}

#[tokio::test]
async fn a_certificate_without_its_key_is_a_start_error() {
    let mut config = GatewayConfig::default();
    config.server.tls_cert_file = Some(format!("{DIR}/cert.pem").into());
    config.upstreams = vec![UpstreamConfig::Mock {
        name: "m".into(),
        models: vec!["m".into()],
    }];
    let err = stormwall_gateway::server::check_config(&config, &env).unwrap_err();
    assert!(err.to_string().contains("go together"), "{err}");
    config.server.tls_key_file = Some(format!("{DIR}/ca.pem").into());
    let err = stormwall_gateway::server::check_config(&config, &env).unwrap_err();
    assert!(err.to_string().contains("no PEM private key"), "{err}");
}

/// A client that trusts both test CAs, so it connects whichever certificate is in force.
fn client_trusting_both() -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for ca in ["ca.pem", "ca2.pem"] {
        roots
            .add(CertificateDer::from_pem_file(format!("{DIR}/{ca}")).unwrap())
            .unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// The DER of the first certificate in a PEM file.
fn leaf(file: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_file(format!("{DIR}/{file}"))
        .unwrap()
        .to_vec()
}

/// An HTTP/1.1 connection over TLS, kept open; the certificate the gateway presented.
// The connection's driver ends with the connection (when `send` is dropped or the server
// closes it).
#[allow(clippy::disallowed_methods)]
async fn open_tls(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    Vec<u8>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_trusting_both())
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the gateway");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, presented)
}

/// One chat request on an open connection; its status. The gateway's small reply is read
/// whole, under a timeout.
#[allow(clippy::disallowed_methods)]
async fn chat_on(
    send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    key: &str,
) -> u16 {
    use http_body_util::{BodyExt, Full};
    let req = http::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(chat_body(
            "gpt-4o-mini",
            false,
        ))))
        .unwrap();
    send.ready().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("no answer over TLS")
        .unwrap();
    let status = resp.status().as_u16();
    tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart_and_open_connections_stay() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::copy(format!("{DIR}/cert.pem"), &cert).unwrap();
    std::fs::copy(format!("{DIR}/key.pem"), &key).unwrap();
    let (c, k) = (cert.clone(), key.clone());
    let mut h = harness_with(move |cfg| {
        cfg.server.tls_cert_file = Some(c);
        cfg.server.tls_key_file = Some(k);
        cfg.server.tls_reload_secs = 1;
    })
    .await;
    let addr = h.gw.as_ref().unwrap().proxy_addr;
    let (api_key, _) = h.key(json!({"tenant": "acme"})).await;
    let (mut old, presented) = open_tls(addr).await;
    assert_eq!(presented, leaf("cert.pem"));
    assert_eq!(chat_on(&mut old, &api_key).await, 200);

    // The renewed pair replaces the files (key first: for a moment the pair on disk does
    // not match, which is refused and retried when the certificate lands).
    std::fs::copy(format!("{DIR}/key2.pem"), &key).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    std::fs::copy(format!("{DIR}/cert2.pem"), &cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (mut fresh, presented) = open_tls(addr).await;
        if presented == leaf("cert2.pem") {
            assert_eq!(chat_on(&mut fresh, &api_key).await, 200);
            break;
        }
        // Until the reload, the old pair, never a mismatched one.
        assert_eq!(presented, leaf("cert.pem"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before the reload is still served.
    assert_eq!(chat_on(&mut old, &api_key).await, 200);

    // A broken certificate file is refused; the pair in force stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (mut after, presented) = open_tls(addr).await;
    assert_eq!(presented, leaf("cert2.pem"));
    assert_eq!(chat_on(&mut after, &api_key).await, 200);
    drop((old, after));
    h.shutdown().await;
}
