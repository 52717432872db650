#!/usr/bin/env bash
# usage: bench/callgrind-per-request.sh GATEWAY_BIN N [--stream]: instructions per request
# at c=1 through one gateway under `valgrind --tool=callgrind` (mock upstream, one key, 200
# warm-up requests, counters zeroed, then N requests, counters dumped). Instruction counts
# do not depend on the machine's load, so two builds or settings compare exactly; the
# absolute figures are inflated by Valgrind's serialised threads and slow clock (timers
# fire more often per request). JOURNAL=off runs with `[journal] enabled = false`.
# Needs the release testkit binaries in target/release and valgrind; see bench/README.md.
set -euo pipefail
GW="$1"; N="$2"; shift 2
# shellcheck source=bench/one-gateway.sh
source "$(dirname "$0")/one-gateway.sh"
env STORMWALL_ADMIN_TOKEN=tok MOCK_UPSTREAM_KEY=sk-mock valgrind --tool=callgrind \
  --callgrind-out-file="$D/cg.%p" "$GW" serve --config "$D/sw.toml" >"$D/gw.log" 2>&1 &
GP=$!
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$A/healthz" >/dev/null && break; sleep 0.5; done
STORMWALL_ADMIN_TOKEN=tok "$BIN/stormwall-loadgen" --create-keys 1 --url "http://127.0.0.1:$A" --tenant b --keys-out "$D/keys.txt" --concurrency 1 >/dev/null
"$BIN/stormwall-loadgen" --url "http://127.0.0.1:$P" --keys-file "$D/keys.txt" --requests 200 --warmup 0 --concurrency 1 "$@" --tsv >/dev/null
sleep 3
callgrind_control -z "$GP" >/dev/null
"$BIN/stormwall-loadgen" --url "http://127.0.0.1:$P" --keys-file "$D/keys.txt" --requests "$N" --warmup 0 --concurrency 1 "$@" --tsv >/dev/null
# Let the last tick ship what the requests left, so each side pays its store writes.
sleep 3
callgrind_control -d "$GP" >/dev/null
sleep 1
kill -INT "$GP" "$MP"; wait "$GP" "$MP" 2>/dev/null || true
DUMP="$(ls "$D"/cg.*.* 2>/dev/null | sort | tail -1)"
TOTAL="$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')"
echo "instructions per request: $(awk -v t="$TOTAL" -v n="$N" 'BEGIN { printf "%.0f", t / n }') (dump $DUMP)"
if [[ -n "${KEEP:-}" ]]; then echo "kept $D"; else rm -rf "$D"; fi
