#!/usr/bin/env bash
# usage: bench/strace-wakes.sh GATEWAY_BIN N [--stream]: syscalls per request at c=1 through
# one gateway (mock upstream, one key, 300 warm-up requests, then N under strace). Needs the
# release testkit binaries in target/release and strace; see bench/README.md (sessions 23, 24).
# JOURNAL=off runs the gateway with `[journal] enabled = false`. The second line splits the
# futex wakes and SQLite's writes by the thread that made them (thread names from /proc).
set -euo pipefail
GW="$1"; N="$2"; shift 2
# shellcheck source=bench/one-gateway.sh
source "$(dirname "$0")/one-gateway.sh"
env STORMWALL_ADMIN_TOKEN=tok MOCK_UPSTREAM_KEY=sk-mock "$GW" serve --config "$D/sw.toml" >"$D/gw.log" 2>&1 &
GP=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$A/healthz" >/dev/null && break; sleep 0.2; done
STORMWALL_ADMIN_TOKEN=tok "$BIN/stormwall-loadgen" --create-keys 1 --url "http://127.0.0.1:$A" --tenant b --keys-out "$D/keys.txt" --concurrency 1 >/dev/null
"$BIN/stormwall-loadgen" --url "http://127.0.0.1:$P" --keys-file "$D/keys.txt" --requests 300 --warmup 0 --concurrency 1 "$@" --tsv >/dev/null
sleep 2
EFD=$(ls -l /proc/$GP/fd | awk '/anon_inode:\[eventfd\]/ {print $(NF-2)}' | tr '\n' ' ')
strace -f -qq -e trace=write,futex,epoll_wait,sendto,recvfrom,read,writev,pwrite64,fdatasync,fsync -o "$D/trace" -p $GP &
SP=$!
sleep 1
"$BIN/stormwall-loadgen" --url "http://127.0.0.1:$P" --keys-file "$D/keys.txt" --requests "$N" --warmup 0 --concurrency 1 "$@" --tsv >/dev/null
sleep 1
kill -INT $SP; wait $SP 2>/dev/null || true
for t in /proc/$GP/task/*; do echo "${t##*/} $(cat "$t/comm")"; done >"$D/threads"
kill $GP $MP; wait $GP $MP 2>/dev/null || true
echo "eventfd fds: $EFD"
awk -v n="$N" -v efd="$EFD" 'BEGIN { split(efd, e, " "); for (i in e) isefd[e[i]] = 1 }
  { if (match($0, /^[0-9]+ +([a-z_0-9]+)\(([0-9]+)?/, m)) { sc = m[1]; c[sc]++; if (sc == "write" && (m[2] in isefd)) ew++; if (sc == "futex" && $0 ~ /FUTEX_WAKE/) fw++ } }
  END { printf "per request: eventfd writes %.2f, futex wakes %.2f", ew / n, fw / n; for (k in c) printf ", %s %.2f", k, c[k] / n; print "" }' "$D/trace"
awk -v n="$N" 'NR == FNR { name[$1] = $2; next }
  { t = name[$1]; if (t == "") t = "gone"; sub(/-[0-9]+$/, "", t); sub(/[0-9]+$/, "", t)
    if ($0 ~ /FUTEX_WAKE/) fw[t]++; if ($2 ~ /^pwrite64\(/) pw[t]++; if ($2 ~ /^fdatasync\(/) fs[t]++ }
  END { printf "by thread:"; for (k in fw) printf " futex wakes %s %.3f;", k, fw[k] / n
        for (k in pw) printf " pwrite64 %s %.3f;", k, pw[k] / n; for (k in fs) printf " fdatasync %s %.3f;", k, fs[k] / n; print "" }' "$D/threads" "$D/trace"
rm -rf "$D"
