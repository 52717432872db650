//! A TCP relay a test can cut and restore, to put a real outage between the gateway and a
//! service it depends on (PostgreSQL, Redis) without stopping the service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// Relays every connection made to [`TcpRelay::addr`] to a target; [`TcpRelay::cut`] drops
/// every open connection and refuses new ones until [`TcpRelay::restore`].
pub struct TcpRelay {
    /// The address to connect to instead of the target.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpRelay {
    /// Starts relaying to `target` (`host:port`); it lives as long as the test's runtime.
    #[allow(clippy::disallowed_methods)] // the relay's tasks live as long as the test
    pub async fn start(target: String) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (u, c) = (Arc::clone(&up), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        });
        Ok(Self { addr, up, conns })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for t in conns.drain(..) {
            t.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
