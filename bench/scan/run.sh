#!/usr/bin/env bash
# Credential-scanner benchmark: `stormwall scan` beside detect-secrets (PyPI) and secretlint
# (npm) on a corpus of real Rust source (the local cargo registry) with synthetic AI keys
# planted in it. Reports MB/s, MB per CPU second, peak memory and how many planted keys each
# tool found (at the right line, and named by provider). See docs/scan.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bench/scan/run.sh [options]
  --corpus-mb N      size of the real-source corpus copied from ~/.cargo/registry/src (default 400)
  --planted N        synthetic keys planted in it (default 130)
  --ds-mb N          size of the subset the slow tools scan (planted files + crates; default 16)
  --secretlint-full  also run secretlint on the whole corpus (tens of minutes on 2 cores)
  --tool-timeout S   stop an external tool after S seconds (default 1800; exit 124)
  --skip-build       use target/release/stormwall as it is
  --skip-others      only stormwall (no pip/npm installs)
  -h, --help         this text
USAGE
}

CORPUS_MB=400
PLANTED=130
DS_MB=16
SKIP_BUILD=0
SKIP_OTHERS=0
SECRETLINT_FULL=0
TOOL_TIMEOUT=1800
while [[ $# -gt 0 ]]; do
  case "$1" in
    --corpus-mb) CORPUS_MB="$2"; shift 2 ;;
    --planted) PLANTED="$2"; shift 2 ;;
    --ds-mb) DS_MB="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --skip-others) SKIP_OTHERS=1; shift ;;
    --secretlint-full) SECRETLINT_FULL=1; shift ;;
    --tool-timeout) TOOL_TIMEOUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out"
CORPUS="$OUT/corpus"
SUBSET="$OUT/corpus-small"
mkdir -p "$OUT"
cd "$ROOT"

if [[ $SKIP_BUILD -eq 0 ]]; then
  cargo build --release -q -p stormwall --bin stormwall
  # The generator runs once per corpus; a debug build shares the test build's artifacts.
  cargo build -q -p stormwall-scan --example gen_corpus
fi
SW="$ROOT/target/release/stormwall"
GEN="$ROOT/target/debug/examples/gen_corpus"

# 1. Corpus: whole crate directories from the registry, binary files (NUL in the first
#    8 KiB: static libraries, images) removed so the corpus is source text only, until the
#    size is reached; then planted keys in new files under planted/.
if [[ ! -f "$CORPUS/.complete-$CORPUS_MB-$PLANTED" ]]; then
  rm -rf "$CORPUS" "$SUBSET"
  mkdir -p "$CORPUS/crates"
  limit=$((CORPUS_MB * 1000 * 1000))
  total=0
  for d in $(ls -d "$HOME"/.cargo/registry/src/*/*/ | sort); do
    (( total >= limit )) && break
    name=$(basename "$d")
    [[ -e "$CORPUS/crates/$name" ]] && continue
    cp -r "$d" "$CORPUS/crates/"
    size=$(python3 - "$CORPUS/crates/$name" <<'PY'
import os, sys
total = 0
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as fh:
            binary = b"\0" in fh.read(8192)
        if binary:
            os.remove(p)
        else:
            total += os.path.getsize(p)
print(total)
PY
)
    total=$((total + size))
  done
  "$GEN" plant "$CORPUS" "$PLANTED" "$OUT/manifest.jsonl" 7 >/dev/null
  # The small subset for the slow tool: the planted files plus crates up to DS_MB.
  mkdir -p "$SUBSET/crates"
  cp -r "$CORPUS/planted" "$SUBSET/"
  slimit=$((DS_MB * 1000 * 1000)); stotal=0
  for d in $(ls -d "$CORPUS"/crates/*/ | sort); do
    size=$(du -sb "$d" | cut -f1)
    if (( stotal + size > slimit )); then continue; fi
    cp -r "$d" "$SUBSET/crates/"
    stotal=$((stotal + size))
  done
  touch "$CORPUS/.complete-$CORPUS_MB-$PLANTED"
fi

warm() { tar cf - "$1" 2>/dev/null | cat >/dev/null; }
measure() { python3 "$HERE/measure.py" "$@"; }

# 2. The other tools, installed by this script into bench/scan/out.
if [[ $SKIP_OTHERS -eq 0 ]]; then
  if [[ ! -x "$OUT/venv/bin/detect-secrets" ]]; then
    python3 -m venv "$OUT/venv"
    "$OUT/venv/bin/pip" install -q detect-secrets
  fi
  if [[ ! -x "$OUT/node/node_modules/.bin/secretlint" ]]; then
    mkdir -p "$OUT/node"
    (cd "$OUT/node" && npm init -y >/dev/null && npm install -s secretlint @secretlint/secretlint-rule-preset-recommend >/dev/null)
  fi
  echo '{"rules":[{"id":"@secretlint/secretlint-rule-preset-recommend"}]}' > "$CORPUS/.secretlintrc.json"
fi

NPROC=$(nproc)
RESULTS="$OUT/measurements.jsonl"
: > "$RESULTS"
record() { # tool corpus-label corpus-dir json
  python3 - "$@" >> "$RESULTS" <<'PY'
import json, sys
tool, label, d, m = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
m.update(tool=tool, corpus=label, dir=d)
print(json.dumps(m))
PY
}

echo "corpus: $(du -sh "$CORPUS" | cut -f1) ($CORPUS), subset: $(du -sh "$SUBSET" | cut -f1); $NPROC cores"

# stormwall, full corpus and subset (reports are JSON lines, paths relative to the root).
for pair in "full:$CORPUS" "small:$SUBSET"; do
  label=${pair%%:*}; dir=${pair#*:}
  warm "$dir"
  m=$(cd "$dir" && measure "$OUT/stormwall-$label.jsonl" -- "$SW" scan . --format jsonl --no-progress)
  record stormwall "$label" "$dir" "$m"
done

if [[ $SKIP_OTHERS -eq 0 ]]; then
  warm "$SUBSET"
  m=$(cd "$SUBSET" && measure "$OUT/detect-secrets-small.json" -- timeout "$TOOL_TIMEOUT" \
      "$OUT/venv/bin/detect-secrets" scan --all-files .)
  record detect-secrets small "$SUBSET" "$m"

  secretlint_runs="small:$SUBSET"
  [[ $SECRETLINT_FULL -eq 1 ]] && secretlint_runs="full:$CORPUS $secretlint_runs"
  for pair in $secretlint_runs; do
    label=${pair%%:*}; dir=${pair#*:}
    cp "$CORPUS/.secretlintrc.json" "$dir/.secretlintrc.json" 2>/dev/null || true
    warm "$dir"
    m=$(cd "$dir" && NODE_OPTIONS=--max-old-space-size=16384 measure "$OUT/secretlint-$label.json" -- \
        timeout "$TOOL_TIMEOUT" "$OUT/node/node_modules/.bin/secretlint" "**/*" --format json --no-color)
    record secretlint "$label" "$dir" "$m"
  done
fi

python3 "$HERE/report.py" "$OUT" | tee "$OUT/results.md"
