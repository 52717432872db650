//! The `stormwall` binary end to end: one integration test binary, one module per verb.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod detect;
mod detect_logs;
mod investigate;
mod ip;
mod journal;
mod keys_bulk;
mod safety;
mod scan;
mod serve;
mod simulate;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_stormwall");

/// A running `stormwall serve`, killed when dropped.
struct Server {
    child: Child,
    proxy: String,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `stormwall serve --config CONFIG` with an admin token and waits for its listeners.
fn serve_with(config: &Path, token: &str) -> Server {
    serve_env(config, token, &[])
}

/// [`serve_with`] with extra environment variables.
fn serve_env(config: &Path, token: &str, env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("STORMWALL_ADMIN_TOKEN", token)
        .env("STORMWALL_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // The first line names the bound addresses: "stormwall: proxy on http://A  admin on http://B".
    let line = lines.next().unwrap().unwrap();
    let mut urls = line.split_whitespace().filter(|w| w.starts_with("http://"));
    let proxy = urls.next().unwrap().to_owned();
    let admin = urls.next().unwrap().to_owned();
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        proxy,
        admin,
    }
}

/// A gateway config on loopback with an SQLite store at `db`, the IP database at `ipdb`
/// and the built-in mock upstream serving `models`.
fn mock_gateway_config(db: &Path, ipdb: &Path, models: &[&str]) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
backend = "sqlite"
path = "{db}"

[ipdb]
path = "{ipdb}"

[[upstreams]]
name = "mock"
kind = "mock"
models = {models:?}
"#,
        db = db.display(),
        ipdb = ipdb.display(),
    )
}

/// Runs the binary with an admin token in the environment.
fn run_with(args: &[&str], token: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("STORMWALL_ADMIN_TOKEN", token)
        .env("STORMWALL_LOG", "warn")
        .output()
        .unwrap()
}
