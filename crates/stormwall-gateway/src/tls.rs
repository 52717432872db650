//! TLS on the proxy listener (`[server] tls_cert_file` / `tls_key_file`): rustls with the
//! `ring` provider, ALPN `h2` and `http/1.1`, and a fingerprint of each connection's
//! ClientHello, computed once per connection and recorded on every event of it
//! (`tls.client.fingerprint`) for the investigation's client-fingerprint nodes.
//!
//! The fingerprint follows JA4's layout but is **not JA4**: rustls exposes the ClientHello's
//! cipher suites, signature schemes, ALPN protocols, server name and supported groups, not
//! its extension list or `supported_versions`. So:
//!
//! - part a: `t`, then `13` when a TLS 1.3 suite (`0x13xx`) is offered, else `12`; `d` when
//!   a server name was sent, else `i`; the count of cipher suites (two digits, at most 99);
//!   the count of supported groups **in place of JA4's extension count**; the first and last
//!   characters of the first ALPN protocol (`00` without ALPN);
//! - part b: the first 12 hex digits of SHA-256 over the cipher suites as 4-digit hex,
//!   sorted, joined by `,` (as JA4_b);
//! - part c: the first 12 hex digits of SHA-256 over the signature schemes as 4-digit hex in
//!   the client's order, `_`, then the supported groups in the client's order — **in place of
//!   JA4_c's sorted extension list**.
//!
//! GREASE values (RFC 8701) are left out everywhere, as JA4 does. Two clients built on
//! different TLS stacks or configurations differ; the same client gives the same value on
//! every connection.
//!
//! The certificate and key are reloaded without a restart ([`CertStore`]): on SIGHUP, and
//! when either file changes (checked every `[server] tls_reload_secs`). A new pair is read,
//! checked (the key must match the certificate) and swapped in for the handshakes that
//! follow; connections already open keep the session they have. A pair that does not load
//! is logged and the one in force is kept.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate")]
    NoCertificate(String),
    /// The key file holds no usable PEM private key.
    #[error("{0}: no PEM private key")]
    NoKey(String),
    /// rustls refused the certificate and key.
    #[error("certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
    /// Only one of the two files is configured.
    #[error("[server] tls_cert_file and tls_key_file go together")]
    Incomplete,
}

/// Modification time, length and (on Unix) inode of a file, when it can be read: a change
/// of any is a new file. The inode catches a same-length replacement that kept its time
/// (`cp -p`, `rsync -t`, a restore), which tools that renew certificates do by renaming.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), inode(&m)))
}

#[cfg(unix)]
fn inode(m: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &fs::Metadata) -> u64 {
    0
}

/// Reads a PEM certificate chain and private key into the pair rustls signs with, checking
/// that the key is the certificate's.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|_| TlsError::NoKey(key.display().to_string()))?;
    Ok(CertifiedKey::from_der(
        certs,
        key,
        &rustls::crypto::ring::default_provider(),
    )?)
}

/// The proxy listener's certificate and key, swapped in place on a reload: each handshake
/// takes the pair in force when it starts.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when the pair in force was read; the lock also makes reloads one
    /// at a time.
    loaded: Mutex<(Stamp, Stamp)>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Reads the pair (an error if it does not load).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let pair = certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            loaded: Mutex::new(stamps),
        }))
    }

    /// The pair in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the files again and swaps the pair in; on an error the pair in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut loaded)
    }

    /// Reloads when either file's modification time or length changed since the last
    /// load; `Ok(true)` when it did. A pair that failed to load is not retried until a
    /// file changes again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if (stamp(&self.cert), stamp(&self.key)) == *loaded {
            return Ok(false);
        }
        self.reload_locked(&mut loaded).map(|()| true)
    }

    fn reload_locked(&self, loaded: &mut (Stamp, Stamp)) -> Result<(), TlsError> {
        // Stamped before reading: a write landing during the read shows as a change next
        // time instead of being missed.
        *loaded = (stamp(&self.cert), stamp(&self.key));
        let pair = certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server configuration for a PEM certificate chain and private key, and the store
/// that reloads them.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertStore>), TlsError> {
    let store = CertStore::load(cert, key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), store))
}

#[allow(clippy::disallowed_methods)] // spawn_blocking awaited here; one reload at a time (CertStore's lock)
async fn reload_in_background(store: &Arc<CertStore>, changed_only: bool, why: &'static str) {
    let s = Arc::clone(store);
    let out = tokio::task::spawn_blocking(move || {
        if changed_only {
            s.reload_if_changed()
        } else {
            s.reload().map(|()| true)
        }
    })
    .await;
    match out {
        Ok(Ok(true)) => tracing::info!(trigger = why, "TLS certificate reloaded"),
        // Nothing changed, or the blocking pool is gone (shutting down).
        Ok(Ok(false)) | Err(_) => {}
        Ok(Err(e)) => tracing::warn!(
            trigger = why,
            error = %e,
            "TLS certificate reload failed; keeping the certificate in force"
        ),
    }
}

/// The reload task: checks the files every `every_secs` (0: never) and reloads on SIGHUP,
/// until shutdown. Owned by `RunningGateway`, which joins it.
#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
pub fn spawn_reloader(
    store: Arc<CertStore>,
    every_secs: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut triggers = crate::reload::Triggers::new(every_secs);
        while let Some(t) = triggers.next(&mut stop).await {
            match t {
                crate::reload::Trigger::Timer => {
                    reload_in_background(&store, true, "file change").await;
                }
                crate::reload::Trigger::Hangup => {
                    reload_in_background(&store, false, "SIGHUP").await;
                }
            }
        }
    })
}

/// GREASE values (RFC 8701): `0x?a?a` with both bytes equal.
fn grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn digest12(text: &str) -> String {
    let d = sha2::Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(12);
    for b in &d[..6] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn hex4(values: impl Iterator<Item = u16>) -> Vec<String> {
    values
        .filter(|v| !grease(*v))
        .map(|v| format!("{v:04x}"))
        .collect()
}

/// The first and last characters of the first ALPN protocol, as JA4 takes them.
fn alpn_chars(first: Option<&[u8]>) -> String {
    let Some(p) = first.filter(|p| !p.is_empty()) else {
        return "00".to_owned();
    };
    let (a, z) = (p[0], p[p.len() - 1]);
    if a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric() {
        format!("{}{}", a as char, z as char)
    } else {
        // JA4: the first hex digit of the first byte and the last of the last byte.
        let (h, l) = (format!("{a:02x}"), format!("{z:02x}"));
        format!("{}{}", &h[..1], &l[1..])
    }
}

/// The fingerprint of what a ClientHello offers, from its parts (see the module docs).
pub fn fingerprint_parts(
    cipher_suites: &[u16],
    signature_schemes: &[u16],
    named_groups: &[u16],
    first_alpn: Option<&[u8]>,
    server_name: bool,
) -> String {
    let ciphers = hex4(cipher_suites.iter().copied());
    let groups = hex4(named_groups.iter().copied());
    let version = if cipher_suites.iter().any(|c| c >> 8 == 0x13) {
        "13"
    } else {
        "12"
    };
    let mut sorted = ciphers.clone();
    sorted.sort();
    let sigs = hex4(signature_schemes.iter().copied());
    format!(
        "t{version}{}{:02}{:02}{}_{}_{}",
        if server_name { 'd' } else { 'i' },
        ciphers.len().min(99),
        groups.len().min(99),
        alpn_chars(first_alpn),
        digest12(&sorted.join(",")),
        digest12(&format!("{}_{}", sigs.join(","), groups.join(","))),
    )
}

/// The fingerprint of a ClientHello rustls has parsed.
pub fn fingerprint(hello: &ClientHello<'_>) -> String {
    let ciphers: Vec<u16> = hello
        .cipher_suites()
        .iter()
        .map(|c| u16::from(*c))
        .collect();
    let sigs: Vec<u16> = hello
        .signature_schemes()
        .iter()
        .map(|s| u16::from(*s))
        .collect();
    let groups: Vec<u16> = hello
        .named_groups()
        .unwrap_or_default()
        .iter()
        .map(|g| u16::from(*g))
        .collect();
    let first_alpn = hello.alpn().and_then(|mut it| it.next());
    fingerprint_parts(
        &ciphers,
        &sigs,
        &groups,
        first_alpn,
        hello.server_name().is_some(),
    )
}

/// A proxy connection: plain TCP, or TLS the gateway terminates.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large and this is once per connection).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gateway/tls");

    fn copy_pair(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::copy(format!("{DIR}/{cert}"), &c).unwrap();
        fs::copy(format!("{DIR}/{key}"), &k).unwrap();
        (c, k)
    }

    #[cfg(unix)]
    #[test]
    fn a_same_length_replacement_that_kept_its_time_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("cert.pem"), dir.path().join("cert.pem.new"));
        fs::write(&a, b"first").unwrap();
        let before = stamp(&a);
        let time = fs::metadata(&a).unwrap().modified().unwrap();
        fs::write(&b, b"other").unwrap();
        fs::File::options()
            .write(true)
            .open(&b)
            .unwrap()
            .set_modified(time)
            .unwrap();
        fs::rename(&b, &a).unwrap();
        let after = stamp(&a);
        assert!(before.is_some());
        assert_ne!(before, after, "same length and time, new file");
    }

    fn leaf(store: &CertStore) -> Vec<u8> {
        store.current().cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = copy_pair(dir.path(), "cert.pem", "key.pem");
        let store = CertStore::load(&c, &k).unwrap();
        let first = leaf(&store);
        assert!(!store.reload_if_changed().unwrap(), "nothing changed");
        // The new certificate without its key: refused, the pair in force stays.
        fs::copy(format!("{DIR}/cert2.pem"), &c).unwrap();
        assert!(store.reload().is_err());
        assert_eq!(leaf(&store), first);
        fs::copy(format!("{DIR}/key2.pem"), &k).unwrap();
        assert!(store.reload_if_changed().unwrap());
        let second = leaf(&store);
        assert_ne!(second, first);
        fs::write(&c, "junk").unwrap();
        assert!(matches!(
            store.reload_if_changed(),
            Err(TlsError::NoCertificate(_))
        ));
        assert_eq!(leaf(&store), second);
        // Not retried until a file changes again.
        assert!(!store.reload_if_changed().unwrap());
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sighup_reloads_the_pair() {
        // Installed before anything sends the signal: SIGHUP's default would end the
        // test process.
        let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = copy_pair(dir.path(), "cert.pem", "key.pem");
        let store = CertStore::load(&c, &k).unwrap();
        let first = leaf(&store);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        // Polling off: only the signal reloads.
        let task = spawn_reloader(Arc::clone(&store), 0, stop_rx);
        copy_pair(dir.path(), "cert2.pem", "key2.pem");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while leaf(&store) == first {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP did not reload"
            );
            let sent = std::process::Command::new("kill")
                .args(["-HUP", &std::process::id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn grease_values_are_left_out_and_order_matters_only_where_documented() {
        let a = fingerprint_parts(
            &[0x1301, 0x1302, 0xc02f],
            &[0x0403, 0x0804],
            &[0x001d, 0x0017],
            Some(b"h2"),
            true,
        );
        assert!(a.starts_with("t13d0302h2_"), "{a}");
        // GREASE anywhere changes nothing; cipher order does not count (sorted), but the
        // signature scheme order does.
        let b = fingerprint_parts(
            &[0x0a0a, 0xc02f, 0x1302, 0x1301],
            &[0x0403, 0x0804],
            &[0x2a2a, 0x001d, 0x0017],
            Some(b"h2"),
            true,
        );
        assert_eq!(a, b);
        let c = fingerprint_parts(
            &[0x1301, 0x1302, 0xc02f],
            &[0x0804, 0x0403],
            &[0x001d, 0x0017],
            Some(b"h2"),
            true,
        );
        assert_ne!(a, c);
        let d = fingerprint_parts(&[0xc02f], &[], &[], None, false);
        assert!(d.starts_with("t12i010000_"), "{d}");
        assert_eq!(alpn_chars(Some(b"http/1.1")), "h1");
        assert_eq!(alpn_chars(Some(&[0x01, 0xff])), "0f");
        assert!(grease(0x1a1a) && grease(0xfafa) && !grease(0x1a2a) && !grease(0x1301));
    }
}
