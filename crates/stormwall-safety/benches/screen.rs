//! Criterion benchmark of the built-in screening stage: the target is under 50 µs p99 for a
//! 1 KB prompt (issue 4). Inputs are synthetic: a plain prompt, one with a hit, and one
//! full of obfuscation so every view and decoder is exercised.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use stormwall_safety::{Kind, Profile, Screener, Transform};

/// Repeats `unit` until the text is `len` bytes (on a char boundary).
fn sized(unit: &str, len: usize) -> String {
    let mut s = String::with_capacity(len + unit.len());
    while s.len() < len {
        s.push_str(unit);
    }
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn inputs() -> Vec<(&'static str, String)> {
    let plain = sized(
        "a lighthouse on a rocky coast at dusk, oil painting, warm light, highly detailed, \
         by a fictional painter, trending on an art site, calm sea, gulls, ",
        1024,
    );
    let mut hit = sized(
        "a quiet harbour scene with boats and nets, soft morning fog, ",
        1000,
    );
    hit.push_str(" a nude figure");
    let obfuscated = {
        let base = sized("a quiet harbour scene with boats and nets, soft fog, ", 400);
        let mut s = Transform::Homoglyph.apply(&base, 1);
        s.push_str(&Transform::ZeroWidth.apply("a nude figure by the sea", 2));
        s.push(' ');
        s.push_str(&Transform::Base64.apply("a quiet harbour at night", 3));
        s.push(' ');
        s.push_str(&Transform::Leetspeak.apply("boats resting in the harbour", 4));
        s.push(' ');
        s.push_str(&Transform::Spacing.apply("calm water", 5));
        let mut end = 1024.min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s
    };
    vec![
        ("plain_1k", plain),
        ("hit_1k", hit),
        ("obfuscated_1k", obfuscated),
    ]
}

fn bench(c: &mut Criterion) {
    let screener = Screener::builtin().unwrap_or_else(|e| panic!("screener: {e}"));
    let profile = Profile::default();
    let mut group = c.benchmark_group("screen");
    for (name, text) in inputs() {
        group.bench_function(name, |b| {
            b.iter(|| screener.screen(black_box(&text), Kind::Image, &profile))
        });
    }
    group.finish();

    // Criterion reports means; the target is a tail latency, so measure p99 directly too.
    for (name, text) in inputs() {
        let mut samples: Vec<Duration> = (0..5000)
            .map(|_| {
                let t = Instant::now();
                black_box(screener.screen(black_box(&text), Kind::Image, &profile));
                t.elapsed()
            })
            .collect();
        samples.sort();
        let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        eprintln!(
            "p50/p99/max {name} ({} bytes): {:?} / {:?} / {:?}",
            text.len(),
            p(0.50),
            p(0.99),
            samples[samples.len() - 1]
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench
}
criterion_main!(benches);
