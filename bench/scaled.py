#!/usr/bin/env python3
"""Scale-out benchmark: two `stormwall serve` replicas on PostgreSQL + Redis against one
replica on SQLite, the same load interleaved in one run.

Every key carries request and token limits, so every admission goes through the counters
(Redis for the replicas, in-process for the single node) and every request is recorded.

    bench/scaled.py [--duration 5] [--concurrency 64] [--keys 200] [--rounds 2] [--skip-build]

Needs PostgreSQL and Redis: URLs from STORMWALL_TEST_POSTGRES_URL / STORMWALL_TEST_REDIS_URL
(defaults: the machine's services). Prints requests/s and p50/p99 per layout, and the ratio.
"""
import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
PG = os.environ.get("STORMWALL_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("STORMWALL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
TOKEN = "bench-" + secrets.token_hex(8)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process for {url} exited early")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def config(path, store, counters, mock_port):
    with open(path, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{store}
{counters}
[ipdb]
path = "{ROOT}/tests/data/ip2asn-test.tsv"
[[upstreams]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "MOCK_UPSTREAM_KEY"
models = ["gpt-4o-mini"]
""")


def serve(cfg, log):
    port, admin = free_port(), free_port()
    env = dict(os.environ, STORMWALL_ADMIN_TOKEN=TOKEN, MOCK_UPSTREAM_KEY="sk-mock", STORMWALL_LOG="warn",
               STORMWALL_POSTGRES_URL=PG, STORMWALL_REDIS_URL=REDIS)
    # Each process in its own working directory: the default event journal directory
    # (`stormwall-journal`) is per process.
    cwd = os.path.join(os.path.dirname(os.path.abspath(cfg)), f"replica-{port}")
    os.makedirs(cwd, exist_ok=True)
    p = subprocess.Popen([f"{BIN}/stormwall", "serve", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                          "--admin-listen", f"127.0.0.1:{admin}"], env=env, stdout=log, stderr=log, cwd=cwd)
    wait_http(f"http://127.0.0.1:{admin}/healthz", p)
    return p, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


def create_keys(admin, n, path):
    keys = []
    for _ in range(n):
        body = json.dumps({"tenant": "bench", "scope": {"rpm": 10_000_000, "tpm": 10_000_000_000}}).encode()
        req = urllib.request.Request(f"{admin}/admin/keys", data=body, method="POST",
                                     headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
        keys.append(json.load(urllib.request.urlopen(req))["key"])
    with open(path, "w") as f:
        f.write("\n".join(keys) + "\n")


def loadgen(url, keys, concurrency, duration):
    return subprocess.Popen([f"{BIN}/stormwall-loadgen", "--url", url, "--keys-file", keys, "--concurrency",
                             str(concurrency), "--duration", str(duration), "--warmup", "1", "--prompt-bytes", "1024",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def result(p):
    out, _ = p.communicate()
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-build", action="store_true")
    a = ap.parse_args()
    if not a.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "stormwall", "-p", "stormwall-testkit"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="stormwall-scaled-")
    log = open(os.path.join(work, "servers.log"), "w")
    procs = []
    try:
        mock_port = free_port()
        mock = subprocess.Popen([f"{BIN}/stormwall-mock", "--listen", f"127.0.0.1:{mock_port}"], stdout=log, stderr=log)
        procs.append(mock)
        time.sleep(0.5)
        single_cfg = os.path.join(work, "single.toml")
        config(single_cfg, f'[store]\nbackend = "sqlite"\npath = "{work}/single.db"', "", mock_port)
        schema = "bench_" + secrets.token_hex(4)
        scaled_cfg = os.path.join(work, "scaled.toml")
        config(scaled_cfg,
               f'[store]\nbackend = "postgres"\nurl_env = "STORMWALL_POSTGRES_URL"\nschema = "{schema}"',
               f'[counters]\nbackend = "redis"\nurl_env = "STORMWALL_REDIS_URL"\nprefix = "{schema}:"', mock_port)
        single, single_url, single_admin = serve(single_cfg, log)
        procs.append(single)
        r1, r1_url, r1_admin = serve(scaled_cfg, log)
        procs.append(r1)
        r2, r2_url, _ = serve(scaled_cfg, log)
        procs.append(r2)
        create_keys(single_admin, a.keys, os.path.join(work, "single.keys"))
        create_keys(r1_admin, a.keys, os.path.join(work, "scaled.keys"))
        time.sleep(1)  # key announcements reach replica 2
        rows = []
        for rnd in range(a.rounds):
            s = result(loadgen(single_url, os.path.join(work, "single.keys"), a.concurrency, a.duration))
            half = a.concurrency // 2
            p1 = loadgen(r1_url, os.path.join(work, "scaled.keys"), half, a.duration)
            p2 = loadgen(r2_url, os.path.join(work, "scaled.keys"), a.concurrency - half, a.duration)
            x1, x2 = result(p1), result(p2)
            rows.append((rnd, s, x1, x2))
        print(f"scale-out benchmark: concurrency {a.concurrency}, {a.duration}s runs, {a.keys} keys with limits, "
              f"1 KB prompts, {os.cpu_count()} cores shared by everything")
        print(f"{'round':<6} {'1×SQLite rps':>13} {'p50':>7} {'p99':>7} | {'2×PG+Redis rps':>15} {'p50':>7} {'p99':>7} | ratio")
        for rnd, s, x1, x2 in rows:
            rps = x1["rps"] + x2["rps"]
            p50 = max(x1["p50_ms"], x2["p50_ms"])
            p99 = max(x1["p99_ms"], x2["p99_ms"])
            print(f"{rnd:<6} {s['rps']:>13.0f} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} | "
                  f"{rps:>15.0f} {p50:>7.2f} {p99:>7.2f} | {rps / max(s['rps'], 1):.2f}")
            errs = sum(r.get("errors", 0) + r.get("transport_errors", 0) for r in (s, x1, x2))
            if errs:
                print(f"       errors: {errs}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        print(f"logs: {work}/servers.log")


if __name__ == "__main__":
    main()
