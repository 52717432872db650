#!/usr/bin/env bash
# Stormwall load benchmark: the same load sent straight to a mock upstream ("direct") and
# through the gateway ("gateway"), interleaved scenario by scenario so drift on the machine
# hits both sides alike. Optional third column: LiteLLM's proxy against the same mock.
# See bench/README.md for what each column means.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/load.sh [options]
  --duration SECS       measured seconds per run (default 5)
  --warmup SECS         unmeasured warm-up per run (default 1)
  --concurrency "LIST"  concurrency levels (default "1 16 64")
  --prompt-bytes N      prompt size of the chat scenarios (default 1024)
  --scenarios "LIST"    request kinds run at each concurrency, in order (default "plain stream"):
                        plain and stream are chat completions, whole and streamed; image is
                        image generation (`stormwall-loadgen --scenario image`), every prompt
                        unique so the encoder tier embeds each one (use with --encoder-dir)
  --image-prompt-bytes N  prompt size of the image scenario (default 300, about 64 tokens)
  --encoder-dir DIR     [safety] encoder_dir of the gateways: the encoder tier loaded
                        (scripts/fetch-model prints DIR); default none: the fast tier alone
  --encoder-precision P [safety] encoder_precision (auto, int8 or f32; the gateways run
                        without STORMWALL_ENCODER_PRECISION then), or both: a second gateway
                        in f32 on the same store and keys beside the first in int8, run right
                        after it in every scenario, and the ratios (int8 / f32) at the end.
                        Needs --encoder-dir; not with --journal both or --compare-bin
  --keys N              API keys created in the gateway's SQLite store (default 10000)
  --keys-via HOW        admin: one by one through the admin API (the gateway running);
                        store: in bulk with `stormwall keys create-bulk` before it starts;
                        auto (default): admin up to 10000 keys, store above
  --soak SECS           instead of the scenario table, one run of SECS at c=16 (plain)
                        sampling the gateway's RSS every --soak-every seconds
  --soak-every SECS     RSS sampling interval of --soak (default 30)
  --soak-warmup SECS    samples before this are warm-up, left out of the flatness check (default 300)
  --rounds N            repeat the whole interleaved sequence N times (default 1); with a
                        second gateway, the report ends with one figure per scenario: the
                        median of its per-round ratios and their range
  --gateway-cpus LIST   pin the gateway with taskset -c LIST (e.g. 0)
  --gateway-workers N   the gateway's [server] worker_threads (default 0: one per core)
  --load-cpus LIST      pin mock, loadgen and LiteLLM with taskset -c LIST (e.g. 1)
  --litellm             also benchmark LiteLLM's proxy (best-effort pip install into bench/out)
  --direct-only         only the direct runs (no gateway; checks mock and loadgen)
  --journal WHICH       on (default, the gateway's default), off ([journal] enabled = false),
                        or both: a second gateway without the journal on the same store,
                        run right after the first in every scenario, and the ratios of
                        CPU per request and added p50 (journal on / off) at the end
  --compare-bin PATH    a second gateway from another build of `stormwall` (say, main before
                        a change), with its own store and keys made the same way, run right
                        after the first in every scenario; the ratios of CPU per request and
                        added p50 (this build / PATH) at the end. Not with --journal both
  --order HOW           with a second gateway (--journal both, --compare-bin), which runs
                        first in each scenario: alternate (default) swaps the two every
                        other round, so neither always runs right after the direct run
                        and right before the other; fixed: the first gateway always first
  --skip-build          use the binaries already in target/release
  --keep-store          keep the run's stores, journals and key files in bench/out/run-*
                        (deleted at exit by default: a run leaves hundreds of megabytes)
  -h, --help            this text
EOF
}

DURATION=5
WARMUP=1
CONCURRENCIES="1 16 64"
PROMPT_BYTES=1024
SCENARIOS="plain stream"
IMAGE_PROMPT_BYTES=300
ENCODER_DIR=""
ENCODER_PRECISION=""
KEYS=10000
KEYS_VIA=auto
SOAK=0
SOAK_EVERY=30
SOAK_WARMUP=300
ROUNDS=1
GATEWAY_CPUS=""
GATEWAY_WORKERS=0
LOAD_CPUS=""
LITELLM=0
DIRECT_ONLY=0
SKIP_BUILD=0
KEEP_STORE=0
JOURNAL=on
COMPARE_BIN=""
ORDER=alternate
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --concurrency) CONCURRENCIES="$2"; shift 2 ;;
    --prompt-bytes) PROMPT_BYTES="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --image-prompt-bytes) IMAGE_PROMPT_BYTES="$2"; shift 2 ;;
    --encoder-dir) ENCODER_DIR="$2"; shift 2 ;;
    --encoder-precision) ENCODER_PRECISION="$2"; shift 2 ;;
    --keys) KEYS="$2"; shift 2 ;;
    --keys-via) KEYS_VIA="$2"; shift 2 ;;
    --soak) SOAK="$2"; shift 2 ;;
    --soak-every) SOAK_EVERY="$2"; shift 2 ;;
    --soak-warmup) SOAK_WARMUP="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --gateway-cpus) GATEWAY_CPUS="$2"; shift 2 ;;
    --gateway-workers) GATEWAY_WORKERS="$2"; shift 2 ;;
    --load-cpus) LOAD_CPUS="$2"; shift 2 ;;
    --litellm) LITELLM=1; shift ;;
    --direct-only) DIRECT_ONLY=1; shift ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --keep-store) KEEP_STORE=1; shift ;;
    --journal) JOURNAL="$2"; shift 2 ;;
    --compare-bin) COMPARE_BIN="$2"; shift 2 ;;
    --order) ORDER="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$KEYS_VIA" in
  admin|store) ;;
  auto) if [[ $KEYS -gt 10000 ]]; then KEYS_VIA=store; else KEYS_VIA=admin; fi ;;
  *) echo "--keys-via must be admin, store or auto" >&2; exit 2 ;;
esac
case "$JOURNAL" in
  on|off|both) ;;
  *) echo "--journal must be on, off or both" >&2; exit 2 ;;
esac
case "$ORDER" in
  alternate|fixed) ;;
  *) echo "--order must be alternate or fixed" >&2; exit 2 ;;
esac
for mode in $SCENARIOS; do
  case "$mode" in
    plain|stream|image) ;;
    *) echo "--scenarios: unknown scenario $mode (plain, stream, image)" >&2; exit 2 ;;
  esac
done
case "$ENCODER_PRECISION" in
  ""|auto|int8|f32) ;;
  both)
    [[ -n "$ENCODER_DIR" ]] || { echo "--encoder-precision both needs --encoder-dir" >&2; exit 2; }
    [[ $JOURNAL != both && -z "$COMPARE_BIN" ]] || { echo "--encoder-precision both, --journal both and --compare-bin each need the second gateway; pick one" >&2; exit 2; }
    ;;
  *) echo "--encoder-precision must be auto, int8, f32 or both" >&2; exit 2 ;;
esac
if [[ -n "$ENCODER_DIR" ]]; then
  [[ -f "$ENCODER_DIR/model.safetensors" ]] || { echo "--encoder-dir: no model.safetensors in $ENCODER_DIR (scripts/fetch-model)" >&2; exit 2; }
  ENCODER_DIR="$(cd "$ENCODER_DIR" && pwd)"
fi
if [[ -n "$COMPARE_BIN" ]]; then
  [[ -x "$COMPARE_BIN" ]] || { echo "--compare-bin: $COMPARE_BIN is not an executable" >&2; exit 2; }
  [[ $JOURNAL != both ]] || { echo "--compare-bin and --journal both each need the second gateway; pick one" >&2; exit 2; }
  COMPARE_BIN="$(cd "$(dirname "$COMPARE_BIN")" && pwd)/$(basename "$COMPARE_BIN")"
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release"
OUT="$ROOT/bench/out"
STAMP="$(date +%Y%m%d-%H%M%S)"
RUN="$OUT/run-$STAMP"
REPORT="$OUT/load-$STAMP.txt"
mkdir -p "$RUN"

# Secrets for this run only; the mock accepts any upstream key.
ADMIN_TOKEN="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
MOCK_KEY="sk-mock-bench"
LITELLM_MASTER_KEY="sk-litellm-bench"

log() { echo "[load.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # The report and the logs stay; the databases, journals and key files (secrets of this
  # run, and most of its disk) go unless --keep-store.
  if [[ $KEEP_STORE -eq 0 ]]; then
    rm -rf "$RUN"/*.db "$RUN"/*.db-wal "$RUN"/*.db-shm "$RUN"/*.event-journal "$RUN"/keys*.txt
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# `taskset -c LIST` prefix when pinning was asked for.
# second_config NAME [sed -e EXPR...]: the first gateway's config on two free ports of its own,
# changed by the expressions, as $RUN/stormwall-NAME.toml (sets GW2_PORT and ADMIN2_PORT).
second_config() {
  local name="$1"
  shift
  GW2_PORT="$(free_port)"
  ADMIN2_PORT="$(free_port)"
  sed -e "s/^listen = .*/listen = \"127.0.0.1:$GW2_PORT\"/" \
    -e "s/^admin_listen = .*/admin_listen = \"127.0.0.1:$ADMIN2_PORT\"/" \
    "$@" "$RUN/stormwall.toml" >"$RUN/stormwall-$name.toml"
}

# start_second BIN NAME: BIN serves $RUN/stormwall-NAME.toml (logging to gateway-NAME.log);
# returns once it answers (sets GW2_PID and GW2_URL).
start_second() {
  local bin="$1" name="$2"
  # shellcheck disable=SC2046
  "${GW_ENV[@]}" STORMWALL_ADMIN_TOKEN="$ADMIN_TOKEN" MOCK_UPSTREAM_KEY="$MOCK_KEY" STORMWALL_LOG="${STORMWALL_LOG:-info}" \
    $(pin "$GATEWAY_CPUS") "$bin" serve --config "$RUN/stormwall-$name.toml" >"$RUN/gateway-$name.log" 2>&1 &
  GW2_PID=$!
  PIDS+=("$GW2_PID")
  wait_http "http://127.0.0.1:$ADMIN2_PORT/healthz" "$GW2_PID" 300 "$RUN/gateway-$name.log"
  wait_http "http://127.0.0.1:$GW2_PORT/v1/models" "$GW2_PID" 30 "$RUN/gateway-$name.log"
  GW2_URL="http://127.0.0.1:$GW2_PORT"
}

pin() {
  if [[ -n "$1" ]]; then
    echo "taskset -c $1"
  fi
}

# A currently free loopback port (racy in theory, fine for a benchmark).
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# Waits until URL answers any HTTP status, while PID is alive.
wait_http() {
  local url="$1" pid="$2" secs="$3" log_file="$4" code
  for _ in $(seq 1 $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log_file" >&2 || true; die "process $pid exited (log: $log_file)"; }
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)"
    if [[ "$code" != "000" && -n "$code" ]]; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$log_file" >&2 || true
  die "$url did not answer within ${secs}s (log: $log_file)"
}

# utime+stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat, after the
# parenthesised command name, which may itself contain spaces).
cpu_ticks() {
  local stat
  stat="$(cat "/proc/$1/stat")"
  stat="${stat##*) }"
  # After the name, field 3 is index 0 here, so utime (14) is index 11 and stime (15) index 12.
  read -r -a f <<<"$stat"
  echo $((f[11] + f[12]))
}

# With --skip-build the binary may predate HEAD (a merge after the build): say so, since the
# report is stamped with HEAD.
binary_note() {
  local bin="$BIN/stormwall" built head
  [[ -x "$bin" ]] || return 0
  built="$(stat -c %Y "$bin")"
  head="$(cd "$ROOT" && git log -1 --format=%ct 2>/dev/null || echo 0)"
  if [[ "$head" -gt "$built" ]]; then
    echo " (WARNING: the binary was built $(date -u -d "@$built" +%H:%M:%SZ), before HEAD was committed: it may be an older commit)"
  fi
}

# Sends one request with each key of FILE to URL (the load generator rotates through the
# file), so every key has been used, admission and detection state included.
use_each_key() {
  # shellcheck disable=SC2046
  $(pin "$LOAD_CPUS") "$BIN/stormwall-loadgen" --url "$1" --keys-file "$2" \
    --requests "$KEYS" --warmup 0 --concurrency 16 --prompt-bytes 64 --tsv >/dev/null
}

# Waits (up to 5 minutes) until PID has used under 1/20 s of CPU in a second: the event
# writer and the detectors have caught up.
wait_idle() {
  local before
  for _ in $(seq 1 300); do
    before="$(cpu_ticks "$1")"
    sleep 1
    [[ $(($(cpu_ticks "$1") - before)) -le $((CLK_TCK / 20)) ]] && break
  done
}

rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# Heap and stacks (anonymous) apart from the executable's and libraries' mapped pages (file):
# only the first grows with keys and traffic.
rss_split() { awk '/^RssAnon/ {a = $2} /^RssFile/ {f = $2} END {printf "anon %.1f, file %.1f", a / 1024, f / 1024}' "/proc/$1/status"; }
CLK_TCK="$(getconf CLK_TCK)"

# With --encoder-precision the config file decides the precision: the variable, which would
# override it, is kept from the gateways.
GW_ENV=(env)
[[ -n "$ENCODER_PRECISION" ]] && GW_ENV=(env -u STORMWALL_ENCODER_PRECISION)

# The safety line of a gateway's /readyz (encoder directory, kernel and precision setting).
safety_line() {
  curl -s --max-time 5 "http://127.0.0.1:$1/readyz" | awk '/^safety:/ {print; exit}'
}

# ---- build --------------------------------------------------------------------------------
if [[ $SKIP_BUILD -eq 0 ]]; then
  log "building release binaries"
  if [[ $DIRECT_ONLY -eq 1 ]]; then
    (cd "$ROOT" && cargo build --release -p stormwall-testkit)
  else
    (cd "$ROOT" && cargo build --release -p stormwall -p stormwall-testkit)
  fi
fi
[[ -x "$BIN/stormwall-mock" && -x "$BIN/stormwall-loadgen" ]] || die "missing testkit binaries in $BIN"
if [[ " $SCENARIOS " == *" image "* && -z "$ENCODER_DIR" && $DIRECT_ONLY -eq 0 ]]; then
  log "note: the image scenario without --encoder-dir measures the fast tier alone"
fi
if [[ $DIRECT_ONLY -eq 0 ]]; then
  [[ -x "$BIN/stormwall" ]] || die "missing $BIN/stormwall (build it, or use --direct-only)"
fi

# ---- mock upstream ------------------------------------------------------------------------
log "starting stormwall-mock"
# shellcheck disable=SC2046
$(pin "$LOAD_CPUS") "$BIN/stormwall-mock" --listen 127.0.0.1:0 >"$RUN/mock.out" 2>"$RUN/mock.err" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
MOCK_URL=""
for _ in $(seq 1 100); do
  MOCK_URL="$(awk '/^listening on / {print $3; exit}' "$RUN/mock.out" 2>/dev/null || true)"
  [[ -n "$MOCK_URL" ]] && break
  kill -0 "$MOCK_PID" 2>/dev/null || die "stormwall-mock exited: $(cat "$RUN/mock.err")"
  sleep 0.1
done
[[ -n "$MOCK_URL" ]] || die "stormwall-mock did not report its address"
log "mock at $MOCK_URL"

# ---- gateway ------------------------------------------------------------------------------
GW_URL=""
GW_PID=""
SAFETY_WHAT=""
SAFETY2_WHAT=""
GW2_URL=""
GW2_PID=""
KEYS2_FILE="$RUN/keys.txt"
RSS2_WHAT=""
RSS_BASE="-"
RSS_KEYS="-"
RSS_WHAT="-"
if [[ $DIRECT_ONLY -eq 0 ]]; then
  GW_PORT="$(free_port)"
  ADMIN_PORT="$(free_port)"
  while [[ "$ADMIN_PORT" == "$GW_PORT" ]]; do ADMIN_PORT="$(free_port)"; done
  cat >"$RUN/stormwall.toml" <<EOF
# Generated by bench/load.sh for one benchmark run.
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
admin_token_env = "STORMWALL_ADMIN_TOKEN"
worker_threads = $GATEWAY_WORKERS

[store]
backend = "sqlite"
path = "$RUN/stormwall.db"

[journal]
enabled = $([[ $JOURNAL == off ]] && echo false || echo true)

[ipdb]
path = "$ROOT/tests/data/ip2asn-test.tsv"

[[upstreams]]
name = "mock"
kind = "openai"
base_url = "$MOCK_URL/v1"
api_key_env = "MOCK_UPSTREAM_KEY"
models = [$([[ " $SCENARIOS " == *" image "* ]] && echo '"gpt-4o-mini", "dall-e-3"' || echo '"gpt-4o-mini"')]
EOF
  if [[ -n "$ENCODER_DIR" || -n "$ENCODER_PRECISION" ]]; then
    {
      echo
      echo "[safety]"
      [[ -n "$ENCODER_DIR" ]] && echo "encoder_dir = \"$ENCODER_DIR\""
      case "$ENCODER_PRECISION" in
        "") ;;
        both) echo 'encoder_precision = "int8"' ;;
        *) echo "encoder_precision = \"$ENCODER_PRECISION\"" ;;
      esac
    } >>"$RUN/stormwall.toml"
  fi
  if [[ $KEYS_VIA == store ]]; then
    log "creating $KEYS keys in the store (stormwall keys create-bulk)"
    started=$SECONDS
    "$BIN/stormwall" keys create-bulk --config "$RUN/stormwall.toml" --count "$KEYS" --tenant bench \
      --out "$RUN/keys.txt" --format keys >&2
    log "created $KEYS keys in $((SECONDS - started)) s"
  fi
  log "starting stormwall serve (config $RUN/stormwall.toml)"
  # Logging at info is per-event, not per-request, so the default level is what users run;
  # override with STORMWALL_LOG.
  # shellcheck disable=SC2046
  "${GW_ENV[@]}" STORMWALL_ADMIN_TOKEN="$ADMIN_TOKEN" MOCK_UPSTREAM_KEY="$MOCK_KEY" STORMWALL_LOG="${STORMWALL_LOG:-info}" \
    $(pin "$GATEWAY_CPUS") "$BIN/stormwall" serve --config "$RUN/stormwall.toml" >"$RUN/gateway.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  # A million keys take a few seconds to load at start.
  wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$GW_PID" 300 "$RUN/gateway.log"
  wait_http "http://127.0.0.1:$GW_PORT/v1/models" "$GW_PID" 30 "$RUN/gateway.log"
  GW_URL="http://127.0.0.1:$GW_PORT"
  RSS_BASE="$(rss_mib "$GW_PID")"
  SAFETY_WHAT="$(safety_line "$ADMIN_PORT")"
  log "gateway ${SAFETY_WHAT:-safety: off}"

  if [[ $KEYS_VIA == admin ]]; then
    log "creating $KEYS keys through the admin API"
    STORMWALL_ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN/stormwall-loadgen" --create-keys "$KEYS" \
      --url "http://127.0.0.1:$ADMIN_PORT" --tenant bench --keys-out "$RUN/keys.txt" --concurrency 8
  fi
  [[ "$(wc -l <"$RUN/keys.txt")" -ge "$KEYS" ]] || die "expected $KEYS keys in $RUN/keys.txt"
  # One request per key (loadgen rotates through the file), so every key has been used —
  # admission and detection state included — when RSS is read.
  log "using each of the $KEYS keys once"
  started=$SECONDS
  use_each_key "$GW_URL" "$RUN/keys.txt"
  log "used $KEYS keys in $((SECONDS - started)) s"
  # The event writer and the detectors may still be working through that pass (a million
  # events take a while): wait until the gateway is idle, so the runs and the RSS reading
  # do not overlap them.
  wait_idle "$GW_PID"
  log "gateway idle $((SECONDS - started)) s after the pass began"
  RSS_KEYS="$(rss_mib "$GW_PID") MiB ($(rss_split "$GW_PID"))"
  if [[ $KEYS_VIA == admin ]]; then
    RSS_WHAT="${RSS_BASE} MiB at start, ${RSS_KEYS} after $KEYS keys created and used once"
  else
    RSS_WHAT="${RSS_BASE} MiB at start with $KEYS keys loaded, ${RSS_KEYS} after each was used once"
  fi
  log "gateway RSS: $RSS_WHAT"
  if [[ $JOURNAL == both ]]; then
    # The same store and keys, without the journal: the in-memory event path to compare with.
    second_config nojournal -e "s/^enabled = true/enabled = false/"
    log "starting a second stormwall serve without the journal (config $RUN/stormwall-nojournal.toml)"
    start_second "$BIN/stormwall" nojournal
    # Warm it like the first: every key used once.
    use_each_key "$GW2_URL" "$RUN/keys.txt"
    wait_idle "$GW2_PID"
  fi
  if [[ $ENCODER_PRECISION == both ]]; then
    # The same store and keys, the encoder in f32: the reference beside the first's int8
    # (its event journal in a directory of its own: one process per journal).
    second_config f32 -e 's/^encoder_precision = .*/encoder_precision = "f32"/' \
      -e "s|^enabled = true\$|enabled = true\ndir = \"$RUN/stormwall-f32.event-journal\"|"
    log "starting a second stormwall serve with the encoder in f32 (config $RUN/stormwall-f32.toml)"
    start_second "$BIN/stormwall" f32
    SAFETY2_WHAT="$(safety_line "$ADMIN2_PORT")"
    log "second gateway ${SAFETY2_WHAT:-safety: off}"
    use_each_key "$GW2_URL" "$RUN/keys.txt"
    wait_idle "$GW2_PID"
  fi
  if [[ -n "$COMPARE_BIN" ]]; then
    # Another build on a store of its own (its migrations may differ), with keys made and
    # used the same way, so both gateways start the runs in the same state.
    second_config compare -e "s|^path = \"$RUN/stormwall.db\"|path = \"$RUN/compare.db\"|"
    if [[ $KEYS_VIA == store ]]; then
      "$COMPARE_BIN" keys create-bulk --config "$RUN/stormwall-compare.toml" --count "$KEYS" --tenant bench \
        --out "$RUN/keys-compare.txt" --format keys >&2
    fi
    log "starting the compared build $COMPARE_BIN (config $RUN/stormwall-compare.toml)"
    start_second "$COMPARE_BIN" compare
    RSS2_BASE="$(rss_mib "$GW2_PID")"
    if [[ $KEYS_VIA == admin ]]; then
      STORMWALL_ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN/stormwall-loadgen" --create-keys "$KEYS" \
        --url "http://127.0.0.1:$ADMIN2_PORT" --tenant bench --keys-out "$RUN/keys-compare.txt" --concurrency 8
    fi
    KEYS2_FILE="$RUN/keys-compare.txt"
    use_each_key "$GW2_URL" "$KEYS2_FILE"
    wait_idle "$GW2_PID"
    RSS2_WHAT="${RSS2_BASE} MiB at start, $(rss_mib "$GW2_PID") MiB ($(rss_split "$GW2_PID")) after its $KEYS keys"
    log "compared build RSS: $RSS2_WHAT"
  fi
fi

# ---- LiteLLM (optional, best-effort) ------------------------------------------------------
LL_URL=""
if [[ $LITELLM -eq 1 ]]; then
  VENV="$OUT/litellm-venv"
  if [[ ! -x "$VENV/bin/litellm" ]]; then
    log "installing litellm[proxy] into $VENV (best-effort)"
    if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q 'litellm[proxy]'; } >"$RUN/litellm-install.log" 2>&1; then
      log "SKIPPING LiteLLM: install failed (see $RUN/litellm-install.log)"
      LITELLM=0
    fi
  fi
  if [[ $LITELLM -eq 1 ]]; then
    LL_PORT="$(free_port)"
    cat >"$RUN/litellm.yaml" <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: $MOCK_URL/v1
      api_key: $MOCK_KEY
general_settings:
  master_key: $LITELLM_MASTER_KEY
EOF
    log "starting LiteLLM proxy on port $LL_PORT"
    # shellcheck disable=SC2046
    $(pin "$LOAD_CPUS") "$VENV/bin/litellm" --config "$RUN/litellm.yaml" --host 127.0.0.1 --port "$LL_PORT" \
      >"$RUN/litellm.log" 2>&1 &
    LL_PID=$!
    PIDS+=("$LL_PID")
    if ( wait_http "http://127.0.0.1:$LL_PORT/health/liveliness" "$LL_PID" 120 "$RUN/litellm.log" ); then
      LL_URL="http://127.0.0.1:$LL_PORT"
    else
      log "SKIPPING LiteLLM: proxy did not start (see $RUN/litellm.log)"
      LITELLM=0
    fi
  fi
fi

# ---- runs ---------------------------------------------------------------------------------
# One loadgen run; prints its TSV line: rps p50 p90 p99 errors sent ok ttfb_p50 ttfb_p99.
loadgen() {
  local out
  # shellcheck disable=SC2046
  if ! out="$($(pin "$LOAD_CPUS") "$BIN/stormwall-loadgen" "$@" --duration "$DURATION" --warmup "$WARMUP" \
    --prompt-bytes "${pb:-$PROMPT_BYTES}" --tsv 2>>"$RUN/loadgen.err")"; then
    log "loadgen failed: $* (see $RUN/loadgen.err)"
    out="0	0	0	0	-1	0	0	0	0"
  fi
  echo "$out"
}

# One gateway run at the scenario's settings; prints: rps p50 p99 errors +p50 cpu_ms/r.
gw_run() {
  local url="$1" pid="$2" keys="${3:-$RUN/keys.txt}" before after g_rps g_p50 g_p99 g_err g_sent cpu added
  before="$(cpu_ticks "$pid")"
  read -r g_rps g_p50 _ g_p99 g_err g_sent _ <<<"$(loadgen --url "$url" --keys-file "$keys" --concurrency "$c" "${stream_flag[@]}")"
  after="$(cpu_ticks "$pid")"
  # CPU per request over every request sent, warm-up included, since the CPU counter
  # covers the warm-up too.
  cpu="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$g_sent" 'BEGIN { if (n > 0) printf "%.3f", t * 1000 / hz / n; else print "-" }')"
  added="$(awk -v g="$g_p50" -v d="$d_p50" 'BEGIN { printf "%+.3f", g - d }')"
  echo "$g_rps $g_p50 $g_p99 $g_err $added $cpu"
}

fmt_row() { printf '%-12s %9s %7s %7s %9s %7s %7s %8s %9s %7s' "$@"; }
fmt_ll() { printf ' | %9s %7s %7s %6s' "$@"; }

{
  echo "Stormwall load benchmark, $(date -Iseconds)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty)')$(binary_note)"
  echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "settings: duration ${DURATION}s, warm-up ${WARMUP}s, prompt ${PROMPT_BYTES} B (image ${IMAGE_PROMPT_BYTES} B), scenarios '${SCENARIOS}', keys ${KEYS} (via ${KEYS_VIA}), rounds ${ROUNDS}, gateway cpus '${GATEWAY_CPUS:-any}', gateway workers ${GATEWAY_WORKERS}, load cpus '${LOAD_CPUS:-any}', journal ${JOURNAL}, order ${ORDER}, encoder precision ${ENCODER_PRECISION:-unset}"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [[ $DIRECT_ONLY -eq 0 ]]; then
    echo "gateway RSS: $RSS_WHAT"
    echo "gateway ${SAFETY_WHAT:-safety: off}"
  fi
  if [[ $ENCODER_PRECISION == both ]]; then
    echo "second gateway ${SAFETY2_WHAT:-safety: off}"
  fi
  if [[ -n "$COMPARE_BIN" ]]; then
    echo "compared build: $COMPARE_BIN; its RSS: $RSS2_WHAT"
  fi
  echo "latency in ms (full body read); rps = successful requests per second"
  echo
  header="$(fmt_row scenario "direct/s" p50 p99 "gw/s" p50 p99 "+p50" "cpu_ms/r" "err d/g")"
  if [[ $LITELLM -eq 1 ]]; then header+="$(fmt_ll "litellm/s" p50 p99 err)"; fi
  echo "$header"
} | tee "$REPORT"

# A soak: one long run at c=16 through the gateway, RSS sampled as it goes, instead of the
# scenario table. "Flat" means every sample after the warm-up is within 10% of the smallest.
soak() {
  [[ -n "$GW_URL" ]] || die "--soak needs the gateway (not --direct-only)"
  local samples="$RUN/soak-rss.tsv" lg_pid t rss
  log "soak: ${SOAK}s at c=16, RSS every ${SOAK_EVERY}s (samples in $samples)"
  echo "# seconds	rss_mib" >"$samples"
  # shellcheck disable=SC2046
  $(pin "$LOAD_CPUS") "$BIN/stormwall-loadgen" --url "$GW_URL" --keys-file "$RUN/keys.txt" \
    --concurrency 16 --duration "$SOAK" --warmup 0 --prompt-bytes "$PROMPT_BYTES" --tsv \
    >"$RUN/soak-loadgen.tsv" 2>>"$RUN/loadgen.err" &
  lg_pid=$!
  PIDS+=("$lg_pid")
  started=$SECONDS
  while kill -0 "$lg_pid" 2>/dev/null; do
    sleep "$SOAK_EVERY"
    # A sample after the load ended shows an idle (and trimmed) gateway, not the soak.
    kill -0 "$lg_pid" 2>/dev/null || break
    t=$((SECONDS - started))
    rss="$(rss_mib "$GW_PID")"
    printf '%s\t%s\n' "$t" "$rss" >>"$samples"
    log "soak: ${t}s RSS ${rss} MiB"
    # Thousands of events a second for minutes would fill the disk (~2 KB each): delete
    # the stored ones at every sample, so SQLite reuses their pages. In small transactions,
    # so the gateway's event writer is never held up long; this touches only the database
    # file, not the gateway's memory.
    python3 - "$RUN/stormwall.db" <<'PY' 2>>"$RUN/soak-prune.err" || log "soak: could not prune stored events (see soak-prune.err)"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
while db.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events LIMIT 2000)").rowcount == 2000:
    pass
db.execute("PRAGMA wal_checkpoint(PASSIVE)")
db.close()
PY
  done
  wait "$lg_pid" || log "soak loadgen failed (see $RUN/loadgen.err)"
  read -r s_rps _ _ s_p99 s_err s_sent _ <"$RUN/soak-loadgen.tsv" || true
  echo "soak: ${SOAK}s at c=16 plain: ${s_rps:-?} req/s, p99 ${s_p99:-?} ms, ${s_err:-?} errors of ${s_sent:-?}" | tee -a "$REPORT"
  awk -v w="$SOAK_WARMUP" '
    !/^#/ && $1 >= w { n++; if (n == 1 || $2 < min) min = $2; if ($2 > max) max = $2; first = first ? first : $2; last = $2 }
    END {
      if (n == 0) { print "soak RSS: no sample after the warm-up"; exit }
      spread = (max - min) / min * 100
      printf "soak RSS after %ds warm-up (%d samples): first %.1f, min %.1f, max %.1f, last %.1f MiB; spread %.1f%% (%s)\n", w, n, first, min, max, last, spread, (spread <= 10 ? "flat within 10%" : "NOT flat within 10%")
    }' "$samples" | tee -a "$REPORT"
}

if [[ $SOAK -gt 0 ]]; then
  ROUNDS=0
  soak
fi

for round in $(seq 1 "$ROUNDS"); do
  for c in $CONCURRENCIES; do
    for mode in $SCENARIOS; do
      # The loadgen flags of the scenario, and its prompt size (read by loadgen()).
      stream_flag=()
      pb="$PROMPT_BYTES"
      [[ $mode == stream ]] && stream_flag=(--stream)
      [[ $mode == image ]] && stream_flag=(--scenario image) && pb="$IMAGE_PROMPT_BYTES"
      label="c=$c $mode"
      [[ $ROUNDS -gt 1 ]] && label="r$round $label"
      log "running $label"

      read -r d_rps d_p50 _ d_p99 d_err _ <<<"$(loadgen --url "$MOCK_URL" --key "$MOCK_KEY" --concurrency "$c" "${stream_flag[@]}")"

      g_rps="-" g_p50="-" g_p99="-" g_err="-" added="-" cpu="-"
      # The second gateway goes first in even rounds with --order alternate.
      second_first=0
      if [[ -n "$GW2_URL" && $ORDER == alternate && $((round % 2)) -eq 0 ]]; then
        second_first=1
        read -r m_rps m_p50 m_p99 m_err m_added m_cpu <<<"$(gw_run "$GW2_URL" "$GW2_PID" "$KEYS2_FILE")"
      fi
      if [[ -n "$GW_URL" ]]; then
        read -r g_rps g_p50 g_p99 g_err added cpu <<<"$(gw_run "$GW_URL" "$GW_PID")"
      fi
      jlabel="$label"
      [[ $JOURNAL == both ]] && jlabel="$label jrnl"
      [[ -n "$COMPARE_BIN" ]] && jlabel="$label this"
      [[ $ENCODER_PRECISION == both ]] && jlabel="$label int8"
      row="$(fmt_row "$jlabel" "$d_rps" "$d_p50" "$d_p99" "$g_rps" "$g_p50" "$g_p99" "$added" "$cpu" "$d_err/$g_err")"

      if [[ $LITELLM -eq 1 ]]; then
        read -r l_rps l_p50 _ l_p99 l_err _ <<<"$(loadgen --url "$LL_URL" --key "$LITELLM_MASTER_KEY" --concurrency "$c" "${stream_flag[@]}")"
        row+="$(fmt_ll "$l_rps" "$l_p50" "$l_p99" "$l_err")"
      fi
      echo "$row" | tee -a "$REPORT"
      if [[ -n "$GW2_URL" ]]; then
        if [[ $second_first -eq 0 ]]; then
          read -r m_rps m_p50 m_p99 m_err m_added m_cpu <<<"$(gw_run "$GW2_URL" "$GW2_PID" "$KEYS2_FILE")"
        fi
        mlabel="$label mem"
        [[ -n "$COMPARE_BIN" ]] && mlabel="$label cmp"
        [[ $ENCODER_PRECISION == both ]] && mlabel="$label f32"
        fmt_row "$mlabel" "$d_rps" "$d_p50" "$d_p99" "$m_rps" "$m_p50" "$m_p99" "$m_added" "$m_cpu" "$d_err/$m_err" | tee -a "$REPORT"
        echo | tee -a "$REPORT"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$cpu" "$m_cpu" "$added" "$m_added" "$second_first" >>"$RUN/ab.tsv"
      fi
    done
  done
done

if [[ -s "$RUN/ab.tsv" ]]; then
  {
    echo
    if [[ -n "$COMPARE_BIN" ]]; then
      echo "this build / compared build (runs back to back): CPU per request and added p50"
    elif [[ $ENCODER_PRECISION == both ]]; then
      echo "encoder int8 / f32 (same store and keys, runs back to back): CPU per request and added p50"
    else
      echo "journal on / off (same store and keys, runs back to back): CPU per request and added p50"
    fi
    awk -F'\t' '{
      cr = ($3 > 0) ? sprintf("%.2f", $2 / $3) : "-"
      lr = ($5 > 0) ? sprintf("%.2f", $4 / $5) : "-"
      printf "  %-16s cpu_ms/r %s / %s = %s   +p50 %s / %s = %s\n", $1, $2, $3, cr, $4, $5, lr
      if ($3 > 0) { n++; cs += $2 / $3; if ($2 / $3 > cm) { cm = $2 / $3; cw = $1 }; on[$6]++; os[$6] += $2 / $3 }
      if ($5 > 0) { m++; ls += $4 / $5; if ($4 / $5 > lm) { lm = $4 / $5; lw = $1 } }
    }
    END {
      if (n > 0) printf "  rows: cpu_ms/r ratio mean %.3f, max %.2f (%s)", cs / n, cm, cw
      if (m > 0) printf "; +p50 ratio mean %.3f, max %.2f (%s)", ls / m, lm, lw
      if (n > 0) printf "\n"
      if (on[0] > 0 && on[1] > 0) printf "  cpu_ms/r ratio mean when the first gateway ran first %.3f (%d rows), when it ran second %.3f (%d rows)\n", os[0] / on[0], on[0], os[1] / on[1], on[1]
    }' "$RUN/ab.tsv"
    if [[ $ROUNDS -gt 1 ]]; then
      # One figure per scenario: the median of its per-round ratios, and their range. A
      # single round moves by more than the 10% bar on a shared machine; the median of five
      # does not (bench/README.md, "Session 25").
      echo "per scenario over $ROUNDS rounds: median ratio (lowest-highest)"
      awk -F'\t' '
        function median(list,   v, n, i, j, t) {
          n = split(list, v, " ")
          for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
          lo = v[1]; hi = v[n]
          return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        {
          s = $1; sub(/^r[0-9]+ /, "", s)
          if (!(s in seen)) { seen[s] = 1; order[++k] = s }
          if ($3 + 0 > 0) cpu[s] = cpu[s] " " $2 / $3
          if ($5 + 0 > 0) lat[s] = lat[s] " " $4 / $5
        }
        END {
          for (i = 1; i <= k; i++) {
            s = order[i]; line = sprintf("  %-16s", s)
            if (cpu[s] != "") { m = median(cpu[s]); line = line sprintf(" cpu_ms/r %.2f (%.2f-%.2f)", m, lo, hi); if (m > 1.10) over++; rows++ }
            else line = line " cpu_ms/r -"
            if (lat[s] != "") { m = median(lat[s]); line = line sprintf("   +p50 %.2f (%.2f-%.2f)", m, lo, hi); if (m > 1.10) lover++ }
            print line
          }
          if (rows > 0) printf "  scenarios whose median ratio is above 1.10: cpu_ms/r %d of %d, +p50 %d of %d\n", over, rows, lover, rows
        }' "$RUN/ab.tsv"
    fi
  } | tee -a "$REPORT"
fi

if [[ -n "$GW_PID" ]]; then
  echo "gateway RSS after the runs: $(rss_mib "$GW_PID") MiB ($(rss_split "$GW_PID"); peak $(hwm_mib "$GW_PID") MiB)" | tee -a "$REPORT"
fi
if [[ -n "$COMPARE_BIN" && -n "$GW2_PID" ]]; then
  echo "compared build RSS after the runs: $(rss_mib "$GW2_PID") MiB ($(rss_split "$GW2_PID"); peak $(hwm_mib "$GW2_PID") MiB)" | tee -a "$REPORT"
fi
echo "report: $REPORT (logs in $RUN)" | tee -a "$REPORT"
