//! The console: web pages on the admin listener at `/console/` for the people who watch
//! the gateway all day — overview, keys, alerts and incidents, content safety, leaked
//! keys, cloud management calls, audit.
//!
//! Server-rendered HTML ([`html`], [`pages`]) with one small script and one style sheet
//! embedded in the binary, under a strict `Content-Security-Policy` (no inline script or
//! style, nothing from elsewhere). Signing in with the admin token or the read-only token
//! starts a session ([`session`]): the browser gets only a random session id in an
//! `HttpOnly`, `SameSite=Strict` cookie; every state change must carry the session's CSRF
//! token; a read-only session changes nothing; every change is audited with the session
//! that made it. Figures are added up by [`stats`], pure.

pub mod cloud;
pub mod html;
pub mod incidents;
pub mod limit;
pub mod pages;
pub mod session;
pub mod stats;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use secrecy::{ExposeSecret, SecretString};

use super::admin::AdminState;
use crate::data::body::ProxyBody;
use session::{Flash, Role, Session, Sessions, same_secret};

/// The console's script (polling, copy button, confirmations).
pub const CONSOLE_JS: &str = include_str!("assets/console.js");
/// The console's style sheet (light and dark).
pub const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// The policy every console response carries: only this origin's script, style, images
/// and connections; no inline script or style; no framing; forms post only here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The session cookie's name.
pub const COOKIE: &str = "stormwall_console";

/// Who the audit log names for sign-in attempts that started no session.
const SIGN_IN_ACTOR: &str = "console:signed-out";

/// Largest form body accepted.
const MAX_FORM: usize = 64 * 1024;

/// `[console]`: the web console on the admin listener.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at `/console/` on the admin listener.
    pub enabled: bool,
    /// Environment variable holding the read-only token (unset or empty: no read-only role).
    pub read_only_token_env: String,
    /// Seconds a session lasts from sign-in.
    pub session_ttl_secs: u64,
    /// Mark the session cookie `Secure`: set it when the admin listener is reached over
    /// TLS (a terminating proxy in front of it).
    pub secure_cookie: bool,
    /// Failed sign-ins one client address (an IPv6 /64) may make per window before it is
    /// refused for a window (0: no per-address limit).
    pub sign_in_failures_per_address: u32,
    /// Failed sign-ins all addresses together may make per window before everyone is
    /// refused for a window (0: no global limit). The admin API is not affected.
    pub sign_in_failures_total: u32,
    /// The sign-in limits' window in seconds, and how long a lock lasts.
    pub sign_in_window_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            read_only_token_env: "STORMWALL_READONLY_TOKEN".to_owned(),
            session_ttl_secs: 8 * 3600,
            secure_cookie: false,
            sign_in_failures_per_address: 5,
            sign_in_failures_total: 50,
            sign_in_window_secs: 300,
        }
    }
}

/// The console's state: its sessions and the read-only token.
pub struct Console {
    /// Signed-in sessions.
    pub sessions: Sessions,
    read_only: Option<SecretString>,
    secure_cookie: bool,
    /// Failed sign-ins, limited per address and in all.
    pub sign_in: limit::SignInLimiter,
}

impl Console {
    /// The console for `config` (`None` when disabled); the read-only token is read
    /// through `env`.
    pub fn from_config(
        config: &ConsoleConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let read_only = env(&config.read_only_token_env)
            .filter(|t| !t.trim().is_empty())
            .map(|t| SecretString::from(t.trim().to_owned()));
        Some(Console {
            sessions: Sessions::new(Duration::from_secs(config.session_ttl_secs.max(60))),
            read_only,
            secure_cookie: config.secure_cookie,
            sign_in: limit::SignInLimiter::new(
                limit::Limits {
                    per_address: config.sign_in_failures_per_address,
                    total: config.sign_in_failures_total,
                    window: Duration::from_secs(config.sign_in_window_secs.max(1)),
                },
                Instant::now(),
            ),
        })
    }

    /// The role a token signs in as, if any.
    fn role_of(&self, admin_token: &SecretString, token: &str) -> Option<Role> {
        // Both comparisons always run, so timing does not tell which token matched.
        let admin = same_secret(token, admin_token.expose_secret());
        let ro = self
            .read_only
            .as_ref()
            .is_some_and(|t| same_secret(token, t.expose_secret()));
        if admin {
            Some(Role::Admin)
        } else if ro {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let mut c = format!(
            "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        );
        if self.secure_cookie {
            c.push_str("; Secure");
        }
        c
    }
}

/// What a page handler needs: the control plane, the signed-in session and the request.
pub struct Ctx<'a> {
    /// The control plane.
    pub app: &'a super::ControlPlane,
    /// The console.
    pub console: &'a Console,
    /// The signed-in session.
    pub session: Session,
    /// Its id (the cookie value; never shown or logged).
    pub sid: String,
    /// The request's query string.
    pub query: String,
    /// Whether this is the script's background refresh (the session's message is kept).
    pub poll: bool,
}

impl Ctx<'_> {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    }

    /// Leaves a message for the next page.
    pub fn flash(&self, f: Flash) {
        self.console.sessions.flash(&self.sid, f);
    }

    /// Appends a console change to the audit log, naming the session's role and tag.
    pub async fn audit(
        &self,
        action: &str,
        target: Option<&str>,
        tenant: Option<&str>,
        mut detail: serde_json::Value,
    ) {
        if let serde_json::Value::Object(m) = &mut detail {
            m.insert("session".into(), self.session.tag.clone().into());
        }
        let actor = format!("console:{}", self.session.role.as_str());
        super::audit::record(self.app, &actor, action, target, tenant, detail).await;
    }
}

/// Sets the headers every console response carries.
fn secure_headers(r: &mut Response<ProxyBody>, cache: &'static str) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

/// An HTML page.
pub fn html_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(&mut r, "no-store");
    r
}

/// A 303 to `location` (a console path).
pub fn redirect(location: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(&mut r, "no-store");
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(&mut r, "no-cache");
    r
}

fn session_id(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Reads a form body (`application/x-www-form-urlencoded`) within the cap.
async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let bytes = crate::http::read_capped(req.into_body(), MAX_FORM, Some(Duration::from_secs(30)))
        .await
        .ok()?;
    Some(
        form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

/// A form field's value.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Handles a request under `/console`.
pub async fn handle(
    admin: &AdminState,
    console: &Console,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/console").unwrap_or("");
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, "/static/console.js") => {
            return asset("text/javascript; charset=utf-8", CONSOLE_JS);
        }
        (&Method::GET, "/static/console.css") => {
            return asset("text/css; charset=utf-8", CONSOLE_CSS);
        }
        (&Method::GET, "") => return redirect("/console/"),
        (&Method::GET, "/login") => {
            return html_response(StatusCode::OK, html::login_page(None));
        }
        (&Method::POST, "/login") => return login(admin, console, req, peer).await,
        _ => {}
    }
    let now = Instant::now();
    let poll = req.headers().contains_key("x-console-poll");
    let session =
        session_id(&req).and_then(|sid| console.sessions.get(&sid, now, !poll).map(|s| (sid, s)));
    let Some((sid, session)) = session else {
        return if method == Method::GET || method == Method::HEAD {
            redirect("/console/login")
        } else {
            html_response(
                StatusCode::UNAUTHORIZED,
                html::message_page("Signed out", "Your session has ended; sign in again."),
            )
        };
    };
    let ctx = Ctx {
        app: &admin.control,
        console,
        session,
        sid,
        query: req.uri().query().unwrap_or("").to_owned(),
        poll,
    };
    let segments: Vec<String> = rest
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    if method == Method::GET || method == Method::HEAD {
        return pages::get(&ctx, &segs).await;
    }
    if method != Method::POST {
        return html_response(
            StatusCode::METHOD_NOT_ALLOWED,
            html::message_page("Not allowed", "This page takes GET or POST."),
        );
    }
    let header_csrf = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(form) = read_form(req).await else {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::message_page("Bad request", "The form could not be read."),
        );
    };
    let csrf = header_csrf.or_else(|| field(&form, "csrf").map(str::to_owned));
    if !csrf.is_some_and(|c| same_secret(&c, &ctx.session.csrf)) {
        tracing::warn!(%peer, path = %path, "console: state change without a valid CSRF token refused");
        return html_response(
            StatusCode::FORBIDDEN,
            html::message_page(
                "Refused",
                "This change did not carry the page's CSRF token; reload the page and try again.",
            ),
        );
    }
    if segs == ["logout"] {
        console.sessions.remove(&ctx.sid);
        ctx.audit(
            "console.sign_out",
            None,
            None,
            serde_json::json!({ "peer": peer.ip().to_string() }),
        )
        .await;
        let mut r = redirect("/console/login");
        if let Ok(v) = HeaderValue::from_str(&console.cookie("", 0)) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    // Revealing kept evidence changes nothing (it is only audited), so both roles may.
    if ctx.session.role == Role::ReadOnly && segs != ["reveal"] {
        return html_response(
            StatusCode::FORBIDDEN,
            html::message_page(
                "Read-only session",
                "This session signed in with the read-only token: it can look at everything and change nothing.",
            ),
        );
    }
    pages::post(&ctx, &segs, &form).await
}

async fn login(
    admin: &AdminState,
    console: &Console,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let Some(form) = read_form(req).await else {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::login_page(Some("The form could not be read.")),
        );
    };
    // A locked address (or everyone, past the global limit) is refused before its token
    // is looked at: the lock was audited when it began.
    if let Err(wait) = console.sign_in.check(peer.ip(), Instant::now()) {
        tracing::warn!(%peer, "console: sign-in refused, too many failed attempts");
        let mut r = html_response(
            StatusCode::TOO_MANY_REQUESTS,
            html::login_page(Some(
                "Too many failed sign-ins: wait a few minutes and try again.",
            )),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let token = field(&form, "token").unwrap_or("").trim();
    let Some(role) = console.role_of(&admin.token, token) else {
        tracing::warn!(%peer, "console: sign-in with a wrong token");
        let lock = console.sign_in.failed(peer.ip(), Instant::now());
        let who = serde_json::json!({ "peer": peer.ip().to_string() });
        super::audit::record(
            &admin.control,
            SIGN_IN_ACTOR,
            "console.sign_in_failed",
            None,
            None,
            who.clone(),
        )
        .await;
        if let Some(lock) = lock {
            let (scope, wait) = match lock {
                limit::Lock::Address(w) => ("address", w),
                limit::Lock::Everyone(w) => ("everyone", w),
            };
            let mut detail = who;
            detail["scope"] = scope.into();
            detail["seconds"] = wait.as_secs().into();
            super::audit::record(
                &admin.control,
                SIGN_IN_ACTOR,
                "console.sign_in_locked",
                None,
                None,
                detail,
            )
            .await;
        }
        return html_response(
            StatusCode::UNAUTHORIZED,
            html::login_page(Some(
                "That token is neither the admin nor the read-only token.",
            )),
        );
    };
    console.sign_in.succeeded(peer.ip());
    let Some((sid, session)) = console.sessions.create(role, Instant::now()) else {
        return html_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            html::login_page(Some("No randomness available for a session id.")),
        );
    };
    let ctx = Ctx {
        app: &admin.control,
        console,
        session,
        sid,
        query: String::new(),
        poll: false,
    };
    ctx.audit(
        "console.sign_in",
        None,
        None,
        serde_json::json!({ "role": role.as_str(), "peer": peer.ip().to_string() }),
    )
    .await;
    let mut r = redirect("/console/");
    let cookie = console.cookie(&ctx.sid, console.sessions.ttl().as_secs());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Text for a list of strings, comma-separated.
pub fn join(items: &[String]) -> String {
    let mut s = String::new();
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{it}");
    }
    s
}
