//! Screens what one benchmark request brings, N times, for instruction counts: the load
//! generator's 1 KiB chat prompt (`prompt`), the mock upstream's answer (`answer`), or both
//! (`both`, the default), each through `analyze_for` and the default profile as the gateway
//! does. Under `valgrind --tool=callgrind`, the difference between two values of N divided
//! by their difference is the instructions per screening (bench/README.md, "Session 25").
//!
//! `cargo build --profile perf -p stormwall-safety --example screen_loop` (with a `perf`
//! profile as in bench/README.md), then `screen_loop N [prompt|answer|both]`.

use std::hint::black_box;
use std::process::ExitCode;

use stormwall_safety::{Kind, Profile, Screener};

/// `stormwall-loadgen`'s filler, repeated to `--prompt-bytes` (1024 by default).
const FILLER: &str =
    "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly plan. ";
/// The mock upstream's twelve-token answer.
const ANSWER: &str = "This is a mock reply from Stormwall's test upstream.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let which = args.next().unwrap_or_else(|| "both".into());
    let mut prompt = String::new();
    while prompt.len() < 1024 {
        prompt.push_str(FILLER);
    }
    prompt.truncate(1024);
    let screener = match Screener::builtin() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("screener: {e}");
            return ExitCode::FAILURE;
        }
    };
    let profile = Profile::default();
    let started = std::time::Instant::now();
    for _ in 0..n {
        if which != "answer" {
            let a = screener.analyze_for(black_box(&prompt), Kind::Chat);
            black_box(a.decide(Kind::Chat, &profile));
        }
        if which != "prompt" {
            let a = screener.analyze_for(black_box(ANSWER), Kind::Chat);
            black_box(a.decide(Kind::Chat, &profile));
        }
    }
    eprintln!("{:?} per iteration", started.elapsed() / n.max(1));
    ExitCode::SUCCESS
}
