//! Start-up and shutdown: validate config, load keys and the IP database, start the event
//! writer, bind the proxy and admin listeners (HTTP/1.1 and HTTP/2 with prior knowledge on
//! the same port), refresh the key cache, and on shutdown drain connections up to a deadline
//! and flush every queued event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use secrecy::SecretString;
use stormwall_store::{BatchWriter, EventsConfig, JournalService, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{GatewayConfig, LimitsConfig};
use crate::control::ControlPlane;
use crate::control::admin::{self, AdminState};
use crate::control::leak_report;
use crate::data::DataPlane;
use crate::data::admit::Clock;
use crate::data::digest::PromptDigester;
use crate::data::ipdb::{IpDb, IpDbError};
use crate::data::keycache::KeyCache;
use crate::data::pipeline;
use crate::metrics::Metrics;
use crate::tls::Conn;
use crate::upstream::{self, Router, UpstreamConfigError};
use stormwall_types::pricing::Pricing;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[[upstreams]]` is invalid.
    #[error(transparent)]
    Upstreams(#[from] UpstreamConfigError),
    /// `[ipdb]` could not be loaded.
    #[error(transparent)]
    IpDb(#[from] IpDbError),
    /// The store failed while loading keys.
    #[error("cannot load keys")]
    Store(#[from] stormwall_store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// No upstream is configured.
    #[error("no [[upstreams]] configured")]
    NoUpstreams,
    /// The event journal cannot be opened.
    #[error(transparent)]
    Journal(stormwall_store::journal::JournalError),
    /// The alerts file cannot be opened.
    #[error("cannot open the alerts file")]
    Alerts(#[source] std::io::Error),
    /// `[leak_reports]` is invalid.
    #[error(transparent)]
    LeakReports(#[from] crate::control::leak_report::KeyConfigError),
    /// `[safety]` is invalid.
    #[error(transparent)]
    Safety(#[from] crate::data::safety::SafetyConfigError),
    /// The key cache could never be refreshed within its staleness bound.
    #[error(
        "[server] key_cache_max_stale_secs ({max}) must be 0 or more than key_refresh_secs ({refresh})"
    )]
    StaleBound {
        /// `key_cache_max_stale_secs`.
        max: u64,
        /// `key_refresh_secs`.
        refresh: u64,
    },
    /// `[server] azure_default_api_version` is not a dated version.
    #[error(
        "[server] azure_default_api_version ({0:?}) must be a dated version: YYYY-MM-DD, optionally followed by a suffix such as -preview"
    )]
    AzureApiVersion(String),
    /// `[events]` is invalid.
    #[error("[events] {0}")]
    Events(String),
    /// `[detect]`, `[response]` or the IP databases' egress flags are invalid.
    #[error(transparent)]
    Detect(#[from] crate::control::detection::EngineConfigError),
    /// The `[alerts]` webhook is misconfigured.
    #[error(transparent)]
    Webhook(#[from] crate::control::webhook::WebhookConfigError),
    /// `[[logs]]` or `[cloud_logs]` is invalid.
    #[error(transparent)]
    Logs(#[from] crate::control::cloud_logs::LogsConfigError),
    /// The cloud-log follower cannot resume.
    #[error(transparent)]
    Follow(#[from] crate::control::cloud_logs::FollowError),
    /// `[server] tls_cert_file` / `tls_key_file` are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The proxy listener's TLS configuration and its reloadable certificate, when `[server]`
/// names a certificate and key.
#[allow(clippy::type_complexity)]
fn tls_config(
    server: &crate::config::ServerConfig,
) -> Result<Option<(Arc<rustls::ServerConfig>, Arc<crate::tls::CertStore>)>, StartError> {
    match (&server.tls_cert_file, &server.tls_key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(crate::tls::server_config(cert, key)?)),
        _ => Err(crate::tls::TlsError::Incomplete.into()),
    }
}

/// What [`check_config`] reports beside errors, for the operator.
#[derive(Debug, Clone)]
pub struct ConfigCheck {
    /// The safety stage in the words of `/readyz`: off, fast tier only, or the encoder's
    /// directory, kernel and precision setting (the encoder was loaded to check it).
    pub safety: String,
}

/// Validates the gateway's config sections without starting anything (`config check`).
pub fn check_config(
    config: &GatewayConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConfigCheck, StartError> {
    if config.upstreams.is_empty() {
        return Err(StartError::NoUpstreams);
    }
    check_stale_bound(&config.server)?;
    check_default_api_version(&config.server)?;
    tls_config(&config.server)?;
    Router::from_config(&config.upstreams, env)?;
    IpDb::load(&config.ipdb)?;
    if config.leak_reports.enabled {
        crate::control::leak_report::ReportVerifier::new(&config.leak_reports)?;
    }
    let safety = match crate::data::safety::SafetyStage::from_config(&config.safety, env)? {
        Some(stage) => stage.encoder_summary().to_owned(),
        None => crate::data::safety::encoder_summary(&config.safety),
    };
    crate::control::detection::engine_config(&config.detect, &config.response, None)?;
    crate::control::webhook::parse_config(&config.alerts, env)?;
    let (_, _, skipped) =
        crate::control::cloud_logs::check(&config.logs, &config.cloud_logs, config.detect.enabled)?;
    for s in skipped {
        tracing::warn!(rule = %s, "cloud logs: Sigma rule skipped");
    }
    Ok(ConfigCheck { safety })
}

fn check_default_api_version(server: &crate::config::ServerConfig) -> Result<(), StartError> {
    match &server.azure_default_api_version {
        Some(v) if !crate::data::route::is_dated_api_version(v) => {
            Err(StartError::AzureApiVersion(v.clone()))
        }
        _ => Ok(()),
    }
}

fn check_stale_bound(server: &crate::config::ServerConfig) -> Result<(), StartError> {
    let (max, refresh) = (
        server.key_cache_max_stale_secs,
        server.key_refresh_secs.max(1),
    );
    if max != 0 && refresh >= max {
        return Err(StartError::StaleBound { max, refresh });
    }
    Ok(())
}

/// A running gateway.
pub struct RunningGateway {
    /// Bound proxy address.
    pub proxy_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// The request path's state (tests and embedding programs inspect it).
    pub data: Arc<DataPlane>,
    /// The control plane's state.
    pub control: Arc<ControlPlane>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    writer: BatchWriter,
    journal: Option<JournalService>,
    follower: Option<JoinHandle<()>>,
    grace: Duration,
}

impl RunningGateway {
    /// Stops accepting, lets in-flight requests and streams finish up to the grace period,
    /// then flushes queued events.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        // The follower saves its cursors on the way out.
        if let Some(f) = self.follower {
            let _ = tokio::time::timeout(self.grace.max(Duration::from_secs(5)), f).await;
        }
        // After the servers: every request has ended, so its settlement is queued.
        for task in self.background {
            task.abort();
        }
        if let Some(journal) = self.journal {
            let left = journal
                .shutdown(self.grace.max(Duration::from_secs(5)))
                .await;
            tracing::info!(unshipped_bytes = left, "event journal closed");
        }
        match self
            .writer
            .shutdown(self.grace.max(Duration::from_secs(5)))
            .await
        {
            Ok(snap) => tracing::info!(
                written = snap.written,
                dropped = snap.dropped,
                "event writer flushed"
            ),
            Err(e) => tracing::error!(error = %e, "event writer did not flush cleanly"),
        }
    }
}

/// Starts a single-node gateway on `config`, with keys and events in `store` and limits
/// counted in this process.
pub async fn start(
    config: GatewayConfig,
    store: Arc<dyn Store>,
    events: &EventsConfig,
    admin_token: SecretString,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunningGateway, StartError> {
    start_with(config, store, None, events, admin_token, env).await
}

/// Starts the gateway; with `counters`, limits are shared with every replica using the same
/// counters, and key changes announced by any replica reach this one's cache.
pub async fn start_with(
    config: GatewayConfig,
    store: Arc<dyn Store>,
    counters: Option<Arc<dyn stormwall_store::Counters>>,
    events: &EventsConfig,
    admin_token: SecretString,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunningGateway, StartError> {
    if config.upstreams.is_empty() {
        return Err(StartError::NoUpstreams);
    }
    check_stale_bound(&config.server)?;
    check_default_api_version(&config.server)?;
    let retention =
        crate::control::retention::Retention::from_config(events).map_err(StartError::Events)?;
    let (proxy_tls, cert_store) = tls_config(&config.server)?.unzip();
    let router = Router::from_config(&config.upstreams, env)?;
    let ipdb = Arc::new(IpDb::load(&config.ipdb)?);
    for missing in ipdb.status().missing {
        tracing::info!(%missing, "IP intelligence");
    }
    let leak_reports = if config.leak_reports.enabled {
        let verifier = crate::control::leak_report::ReportVerifier::new(&config.leak_reports)?;
        Some((config.leak_reports.path.clone(), verifier))
    } else {
        None
    };
    // Subscribe before the first load, so no change falls between the two.
    let key_changes = match &counters {
        Some(c) => match c.subscribe_key_changes().await {
            Ok(sub) => Some(sub),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to key changes; relying on periodic refresh");
                None
            }
        },
        None => None,
    };
    let alerts =
        crate::control::alerts::AlertSink::open(&config.alerts).map_err(StartError::Alerts)?;
    let safety = crate::data::safety::SafetyStage::from_config(&config.safety, env)?.map(Arc::new);
    let (watched, rules, skipped) =
        crate::control::cloud_logs::check(&config.logs, &config.cloud_logs, config.detect.enabled)?;
    for s in skipped {
        tracing::warn!(rule = %s, "cloud logs: Sigma rule skipped");
    }
    let mut follower = None;
    let detection = if config.detect.enabled {
        let cfg = crate::control::detection::engine_config(
            &config.detect,
            &config.response,
            Some(Arc::clone(&ipdb)),
        )?;
        if !watched.is_empty() {
            follower = Some(crate::control::cloud_logs::Follower::open(
                watched,
                rules,
                config.cloud_logs.clone(),
                cfg.clone(),
                Some(Arc::clone(&ipdb)),
            )?);
        }
        Some(crate::control::detection::Detection::new(cfg))
    } else {
        None
    };
    let client = upstream::http_client(&config.limits);
    let webhook = crate::control::webhook::Webhook::start(&config.alerts, client.clone(), env)?;
    let keys = Arc::new(KeyCache::default());
    load_keys(store.as_ref(), &keys, None).await?;
    let (shared, settle_task) = match &counters {
        Some(c) => {
            let (settler, task) = crate::data::shared_admit::Settler::spawn(Arc::clone(c));
            (Some((Arc::clone(c), settler)), Some(task))
        }
        None => (None, None),
    };
    let (sink, writer) = BatchWriter::spawn(
        Arc::clone(&store) as Arc<dyn stormwall_store::EventStore>,
        events,
    );
    let journal = match (&config.journal.dir, config.journal.enabled) {
        (Some(dir), true) => {
            let (journal, service) = JournalService::start(
                &config.journal,
                dir,
                Arc::clone(&store) as Arc<dyn stormwall_store::EventStore>,
                events,
            )
            .map_err(StartError::Journal)?;
            tracing::info!(dir = %dir.display(), policy = ?journal.policy(), "event journal open");
            Some((journal, service))
        }
        _ => None,
    };
    let mut metrics = Metrics::new(
        Arc::clone(sink.stats()),
        keys.len_counter(),
        shared
            .as_ref()
            .map(|(c, s)| (Arc::clone(c), Arc::clone(&s.dropped))),
    );
    if let Some((d, _)) = &detection {
        metrics.register_detection(
            Arc::clone(d.dropped()),
            webhook.as_ref().map(|w| Arc::clone(w.stats())),
        );
    }
    if let Some((j, _)) = &journal {
        metrics.register_journal(j.clone());
    }
    let follow_stats = follower
        .as_ref()
        .map(crate::control::cloud_logs::Follower::stats);
    if let Some(st) = &follow_stats {
        metrics.register_cloud_logs(Arc::clone(st));
    }
    let metrics = Arc::new(metrics);
    let (detection, inbox) = match detection {
        Some((d, inbox)) => (Some(d), Some(inbox)),
        None => (None, None),
    };
    let data = Arc::new(DataPlane {
        client: client.clone(),
        upstreams: crate::data::conn::UpstreamPool::new(
            upstream::connector(&config.limits),
            config.limits.upstream_pool_max_idle_per_host,
        ),
        limits: config.limits.clone(),
        key_max_stale_secs: config.server.key_cache_max_stale_secs,
        trusted_proxies: config.server.trusted_proxies.clone(),
        azure_default_api_version: config.server.azure_default_api_version.clone(),
        keys: Arc::clone(&keys),
        router,
        ipdb: Arc::clone(&ipdb),
        secrets: match stormwall_scan::Matcher::builtin() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "built-in credential rules failed to load; bodies are not scanned");
                None
            }
        },
        digester: PromptDigester::default(),
        pricing: Pricing::new(&config.pricing),
        sink,
        journal: journal.as_ref().map(|(j, _)| j.clone()),
        tap: detection
            .as_ref()
            .map(crate::control::detection::Detection::tap),
        metrics: Arc::clone(&metrics),
        clock: Clock::default(),
        counters: shared,
        safety: safety.clone(),
    });
    let control = Arc::new(ControlPlane {
        store,
        keys,
        counters,
        alerts,
        detection,
        webhook,
        safety,
        metrics,
        limits: config.limits.clone(),
        leak_reports,
        ipintel: Arc::clone(&ipdb),
        journal: journal.as_ref().map(|(j, _)| j.clone()),
        cloud_logs: follow_stats,
    });
    load_spend(&control).await;

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let proxy_listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.server.admin_listen).await?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.server.admin_listen,
            source,
        })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);

    let (proxy_data, proxy_control) = (Arc::clone(&data), Arc::clone(&control));
    let proxy = serve(
        proxy_listener,
        proxy_tls,
        shutdown_rx.clone(),
        grace,
        config.limits.clone(),
        move |req, peer, tls| {
            let (data, control) = (Arc::clone(&proxy_data), Arc::clone(&proxy_control));
            async move {
                // Leaked-key reports reach the proxy listener (reporters come from the
                // internet) but belong to the control plane.
                let resp = if leak_report::is_report(&control, req.method(), req.uri().path()) {
                    leak_report::serve(&control, &data, req, peer).await
                } else {
                    pipeline::handle(data, req, peer, tls.as_deref()).await
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        },
    );
    let admin_state = Arc::new(AdminState {
        control: Arc::clone(&control),
        token: admin_token,
        console: crate::control::console::Console::from_config(&config.console, env),
    });
    let admin = serve(
        admin_listener,
        None,
        shutdown_rx.clone(),
        grace,
        config.limits.clone(),
        move |req, peer, _| admin::handle(Arc::clone(&admin_state), req, peer),
    );
    let mut background = vec![spawn_refresher(
        Arc::clone(&control),
        Duration::from_secs(config.server.key_refresh_secs.max(1)),
        shutdown_rx.clone(),
    )];
    background.push(crate::control::ipintel::spawn_reloader(
        Arc::clone(&ipdb),
        shutdown_rx.clone(),
    ));
    if retention.is_on() {
        background.push(crate::control::retention::spawn(
            Arc::clone(&control),
            retention,
            shutdown_rx.clone(),
        ));
    }
    if let Some(store) = cert_store {
        background.push(crate::tls::spawn_reloader(
            store,
            config.server.tls_reload_secs,
            shutdown_rx.clone(),
        ));
    }
    let follower = follower
        .map(|f| crate::control::cloud_logs::spawn(Arc::clone(&control), f, shutdown_rx.clone()));
    if let Some(sub) = key_changes {
        background.push(spawn_change_listener(
            Arc::clone(&control),
            sub,
            shutdown_rx,
        ));
    }
    background.extend(settle_task);
    if let Some(inbox) = inbox {
        background.push(crate::control::detection::spawn(
            Arc::clone(&control),
            inbox,
        ));
    }
    tracing::info!(%proxy_addr, %admin_addr, keys = data.keys.len(), "stormwall gateway listening");
    Ok(RunningGateway {
        proxy_addr,
        admin_addr,
        data,
        control,
        shutdown,
        servers: vec![proxy, admin],
        background,
        writer,
        journal: journal.map(|(_, service)| service),
        follower,
        grace,
    })
}

/// Seeds today's and this month's spend for keys with budgets, so a restart does not reset them.
async fn load_spend(state: &ControlPlane) {
    let now = time::OffsetDateTime::now_utc();
    let day_start = now.replace_time(time::Time::MIDNIGHT);
    let month_start = day_start.replace_day(1).unwrap_or(day_start);
    for cached in state.keys.budgeted() {
        if cached.state.spend_loaded() {
            continue;
        }
        let id = &cached.record.id;
        let day = state.store.spend_since(id, day_start).await.unwrap_or(0.0);
        let month = state
            .store
            .spend_since(id, month_start)
            .await
            .unwrap_or(0.0);
        cached.state.load_spend(now, day, month);
    }
}

/// Keys read from the store per page when the cache loads them all: a load holds one page
/// of full records at a time, however many keys there are. Small, because each page is
/// read on whichever blocking thread is free and glibc keeps what a thread freed in that
/// thread's arena: with 10,000-key pages a gateway's RSS grew by ~10 MiB at every reload
/// until each arena held a page's worth (see bench/README.md, "Memory").
const KEY_PAGE: usize = 1_000;

/// Loads every key from the store into the cache, page by page. With `seen` (the cache's
/// version before the load) the load gives up, returning `Ok(false)`, once a single-key
/// update happened meanwhile (see [`KeyCache::sync_begin`]).
async fn load_keys(
    store: &dyn stormwall_store::Store,
    keys: &KeyCache,
    seen: Option<u64>,
) -> Result<bool, stormwall_store::StoreError> {
    let _one_at_a_time = keys.sync_lock().lock().await;
    let mut sync = keys.sync_begin(seen);
    let mut after: Option<stormwall_types::KeyId> = None;
    loop {
        let page = store.list_keys_page(after.as_ref(), KEY_PAGE).await?;
        let last = page.len() < KEY_PAGE;
        after = page.last().map(|r| r.id.clone());
        if !keys.sync_page(&mut sync, page) {
            return Ok(false);
        }
        if last {
            break;
        }
    }
    Ok(keys.sync_finish(sync))
}

#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
fn spawn_refresher(
    state: Arc<ControlPlane>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let seen = state.keys.version();
            // Skip this round if the admin API changed a key meanwhile: the list may
            // predate that change, and a stale revoked key must never come back.
            match load_keys(state.store.as_ref(), &state.keys, Some(seen)).await {
                Ok(replaced) => {
                    if !replaced {
                        // The store answered: the cache is as fresh as the update that raced.
                        state.keys.mark_synced();
                        tracing::debug!("key refresh raced an update; retrying next tick");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "key refresh failed; serving from cache"),
            }
        }
    })
}

/// Applies key changes announced by other replicas (revocations reach every cache in well
/// under a second); a `Resync` reloads every key.
#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
fn spawn_change_listener(
    state: Arc<ControlPlane>,
    mut changes: stormwall_store::KeyChanges,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = stop.changed() => return,
            };
            match change {
                None => return,
                Some(stormwall_store::KeyChange::Key(id)) => {
                    match state.store.get_key(&id).await {
                        Ok(Some(record)) => {
                            let status = record.status;
                            let before = state.keys.upsert(record);
                            // A suspension, resumption or revocation made on another replica
                            // reaches this replica's detectors as if made here.
                            if let Some(d) = &state.detection
                                && before.is_some_and(|b| b != status)
                            {
                                d.key_status(&id, status);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(key_id = %id, error = %e, "cannot re-read a changed key")
                        }
                    }
                    if let Some(d) = &state.detection {
                        d.verdicts_changed(Some(&id));
                    }
                }
                Some(stormwall_store::KeyChange::Resync) => {
                    match load_keys(state.store.as_ref(), &state.keys, None).await {
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "key resync failed; serving from cache")
                        }
                    }
                    if let Some(d) = &state.detection {
                        d.verdicts_changed(None);
                    }
                }
            }
        }
    })
}

/// Most requests in flight at once on one HTTP/2 connection (each is still admitted against
/// its key's concurrency limit); more are refused with `REFUSED_STREAM`, which clients retry.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// How often an HTTP/2 connection is pinged, so one whose client vanished is closed (and its
/// streams' upstream requests cancelled) instead of held open.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long an HTTP/2 ping may go unanswered before the connection is closed.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection builder both listeners use: HTTP/1.1, or HTTP/2 when the client opens with
/// the HTTP/2 preface (prior knowledge; TLS and ALPN are terminated in front of the gateway).
fn conn_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    // HTTP/2 has no header count or header read timeout in hyper: the decoded header list
    // is capped at the same size as an HTTP/1 head (a count cap follows, each field costing
    // at least 32 bytes of it), and `serve` bounds the wait for the first request.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

#[allow(clippy::disallowed_methods)] // accept loop and per-connection tasks, tracked by GracefulShutdown
fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: LimitsConfig,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr, Option<Arc<str>>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<
            Output = Result<
                hyper::Response<crate::data::body::ProxyBody>,
                std::convert::Infallible,
            >,
        > + Send
        + 'static,
{
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let builder = Arc::new(conn_builder(&limits));
        let first_request = Duration::from_secs(limits.header_read_timeout_secs);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            // A small reply held back by Nagle + delayed ACK costs 40 ms.
            let _ = stream.set_nodelay(true);
            let h = handler.clone();
            let started = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&started);
            let builder = Arc::clone(&builder);
            let watcher = graceful.watcher();
            let tls = tls.clone();
            tokio::spawn(async move {
                // The handshake shares the first request's deadline; the ClientHello's
                // fingerprint is computed here, once per connection, and each request only
                // clones its `Arc`.
                let (stream, fingerprint) = match tls {
                    None => (Conn::Plain(stream), None),
                    Some(config) => {
                        let deadline = tokio::time::Instant::now() + first_request;
                        let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                            rustls::server::Acceptor::default(),
                            stream,
                        );
                        let start = match tokio::time::timeout_at(deadline, acceptor).await {
                            Ok(Ok(start)) => start,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS ClientHello refused");
                                return;
                            }
                            Err(_) => return,
                        };
                        let fp: Arc<str> = crate::tls::fingerprint(&start.client_hello()).into();
                        match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
                            Ok(Ok(s)) => (Conn::Tls(Box::new(s)), Some(fp)),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                let svc = service_fn(move |req| {
                    seen.store(true, Ordering::Relaxed);
                    h(req, peer, fingerprint.clone())
                });
                let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), svc));
                let mut conn = std::pin::pin!(conn);
                // Telling HTTP/1 from HTTP/2 waits for the client's first bytes, and HTTP/2
                // has no header read timeout: a client that sends no request within the
                // header read timeout is closed, as HTTP/1 alone would close it.
                let ended = tokio::select! {
                    ended = &mut conn => Some(ended),
                    () = tokio::time::sleep(first_request) => None,
                };
                let ended = match ended {
                    Some(ended) => ended,
                    None if !started.load(Ordering::Relaxed) => {
                        tracing::debug!("no request within the header read timeout; closing");
                        return;
                    }
                    None => conn.await,
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown grace period over; closing remaining connections"
            );
        }
    })
}
