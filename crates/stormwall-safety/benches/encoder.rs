//! Criterion benchmark of the encoder tier's sentence encoder on a 64-token prompt
//! (target: p50 under 8 ms on one core, issue 12). Needs the model:
//!
//!   STORMWALL_ENCODER_DIR=$(scripts/fetch-model) cargo bench -p stormwall-safety --bench encoder
//!
//! Without `STORMWALL_ENCODER_DIR` it says so and measures nothing. One thread: the matrix
//! kernels are single-threaded (ndarray without its threading feature). Each case runs in
//! f32 (the reference) and in int8 (with the kernel this processor gets: `int8/avx512-vnni`,
//! `int8/avx2`, or `int8/scalar`; `STORMWALL_ENCODER_KERNEL=avx2` etc. picks another it
//! has); `STORMWALL_ENCODER_PRECISION=f32` (or `int8`) runs only that one, e.g. under
//! `perf record`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use stormwall_safety::encoder::{Encoder, PRECISION_ENV, Precision};

const PROMPT: &str = "a lighthouse on a rocky coast at dusk, oil painting, warm light, highly \
    detailed, calm sea, gulls circling over the harbour, fishing boats resting by the pier, \
    soft clouds, golden hour, a quiet village on the hill behind, wide angle, cinematic \
    composition, by a fictional painter";

fn bench(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("STORMWALL_ENCODER_DIR") else {
        eprintln!("STORMWALL_ENCODER_DIR unset (scripts/fetch-model prints it): nothing measured");
        return;
    };
    let load = |p| {
        Encoder::from_dir_with(std::path::Path::new(&dir), p)
            .unwrap_or_else(|e| panic!("encoder: {e}"))
    };
    let encoders: Vec<Encoder> = match std::env::var(PRECISION_ENV).ok().as_deref() {
        Some(p) => vec![load(
            Precision::parse(p).unwrap_or_else(|| panic!("{PRECISION_ENV}={p:?}")),
        )],
        None => vec![load(Precision::F32), load(Precision::Int8)],
    };
    let enc = &encoders[0];
    let long = format!("{PROMPT}, {PROMPT}");
    let mut ids = enc.tokenize(&long);
    assert!(ids.len() >= 64, "{} tokens", ids.len());
    // Exactly 64 tokens: 62 of the prompt between [CLS] and [SEP].
    let sep = ids[ids.len() - 1];
    ids.truncate(63);
    ids.push(sep);
    let short = enc.tokenize("a lighthouse at dusk, oil painting");
    let mut group = c.benchmark_group("encoder");
    for e in &encoders {
        let k = e.kernel_name().replace('/', "_");
        group.bench_function(format!("embed_64_tokens_{k}"), |b| {
            b.iter(|| e.embed_ids(black_box(&ids)))
        });
        group.bench_function(format!("embed_{}_tokens_{k}", short.len()), |b| {
            b.iter(|| e.embed_ids(black_box(&short)))
        });
    }
    group.bench_function("tokenize_64_tokens", |b| {
        b.iter(|| enc.tokenize(black_box(PROMPT)))
    });
    group.finish();

    for (e, (name, input)) in encoders
        .iter()
        .flat_map(|e| [(e, ("64 tokens", &ids)), (e, ("short", &short))])
    {
        let name = format!("{name}, {}", e.kernel_name());
        let cpu0 = thread_cpu_ns();
        let mut samples: Vec<Duration> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let _ = black_box(e.embed_ids(black_box(input)));
                t.elapsed()
            })
            .collect();
        // On a shared machine wall time includes waiting for a core; the thread's own CPU
        // time (Linux schedstat, ns) is what one core spends per call.
        if let (Some(a), Some(b)) = (cpu0, thread_cpu_ns()) {
            eprintln!(
                "encoder CPU time per call, {name}: {:?}",
                Duration::from_nanos((b - a) / samples.len() as u64)
            );
        }
        samples.sort();
        let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        eprintln!(
            "encoder p50/p99 {name} ({} ids): {:?} / {:?}",
            input.len(),
            p(0.50),
            p(0.99)
        );
    }
}

/// This thread's CPU time so far, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
