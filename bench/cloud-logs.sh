#!/usr/bin/env bash
# Cloud-log throughput: parse + detect records per CPU-second on one core, JSON lines
# (issue 14's target: at least 200,000). Runs the `parse_detect` bench of
# stormwall-cloudlogs (CloudTrail Bedrock records, auto-detected and forced, and Azure
# OpenAI diagnostic records; 200 principals over 14 days, generated deterministically) and
# checks each "parse + detect" figure with the data-plane engine on against the target.
#
# With --cli BIN it also times the real command, `BIN detect --logs FILE --json`, over the
# same records written to a scratch folder (user + system CPU seconds of the process,
# which also reads the file and prints the alerts), and deletes them afterwards.
#
# Usage: bench/cloud-logs.sh [--records N] [--target R] [--cli target/release/stormwall]
set -euo pipefail
cd "$(dirname "$0")/.."
N=200000
TARGET=200000
CLI=
while [ $# -gt 0 ]; do
  case "$1" in
    --records) N=$2; shift 2 ;;
    --target) TARGET=$2; shift 2 ;;
    --cli) CLI=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=$(mktemp)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$OUT" "$SCRATCH"' EXIT
cargo bench -q -p stormwall-cloudlogs --bench parse_detect -- "$N" | tee "$OUT"
status=0
# "<name>: … | parse + detect R records/CPU-s …" for the lines with the engine on.
while IFS= read -r line; do
  name=${line%%:*}
  rate=$(sed -n 's/.*parse + detect \([0-9]*\) records\/CPU-s.*/\1/p' <<<"$line")
  [ -n "$rate" ] || continue
  case "$name" in *"engine off"*) continue ;; esac
  if [ "$rate" -ge "$TARGET" ]; then verdict=pass; else verdict=BELOW; status=1; fi
  printf '%-40s %9s records/CPU-s  (target %s) %s\n' "$name" "$rate" "$TARGET" "$verdict"
done <"$OUT"
if [ -n "$CLI" ]; then
  cargo bench -q -p stormwall-cloudlogs --bench parse_detect -- "$N" --emit "$SCRATCH" >/dev/null
  for f in cloudtrail azure-diagnostics; do
    python3 - "$CLI" "$SCRATCH/$f.jsonl" "$N" "$f" <<'PY'
import resource, subprocess, sys, time
cli, path, n, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = time.monotonic()
p = subprocess.run([cli, "detect", "--logs", path, "--json"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
wall = time.monotonic() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = ru.ru_utime + ru.ru_stime
print(f"{'detect --logs ' + name:<40} {n / cpu:9.0f} records/CPU-s  ({cpu:.2f} CPU-s, "
      f"{wall:.2f} s wall, peak RSS {ru.ru_maxrss // 1024} MiB, exit {p.returncode})")
PY
  done
fi
exit $status
