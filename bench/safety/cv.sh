#!/usr/bin/env bash
# Tuning figures for the safety stage: 5-fold cross-validation of the model on the
# development part of the frozen split (train on four folds, evaluate on the fifth), summed
# over folds. The figures to quote are `stormwall safety eval --split test` with the shipped
# model (trained on the whole development part, never on the test part).
#
# Usage: bench/safety/cv.sh [DATA_DIR] [PROFILE]   (needs a release build and python3)
set -euo pipefail
DATA=${1:-../shared/datasets/safety}
PROFILE=${2:-default}
BIN=${STORMWALL:-target/release/stormwall}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
FILES=("$DATA"/*.jsonl)
for k in 0 1 2 3 4; do
  "$BIN" safety train --data "$DATA" --out "$OUT/fold$k.bin" --folds 5 --holdout "$k" 2>/dev/null
  "$BIN" safety eval "${FILES[@]}" --model "$OUT/fold$k.bin" --folds 5 --fold "$k" \
    --split dev --profile "$PROFILE" --json > "$OUT/fold$k.json"
done
python3 - "$OUT" <<'PY'
import json, sys, glob, collections
reports = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[1] + "/fold*.json"))]
def total(key):
    acc = collections.defaultdict(lambda: collections.Counter())
    for r in reports:
        for name, m in r[key].items():
            acc[name].update({k: m[k] for k in ("tp", "fp", "tn", "fn")})
    return acc
def line(name, c):
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    print(f"{name:24} {tp:5} {fp:5} {tn:5} {fn:5}  P {p:.3f}  R {r:.3f}  F1 {f1:.3f}  FPR {fpr:.3f}")
print("5-fold cross-validation (model trained without the fold it is scored on)")
for key in ("by_source", "by_kind"):
    for name, c in sorted(total(key).items()):
        line(name, c)
ev = collections.defaultdict(collections.Counter)
blk = collections.defaultdict(collections.Counter)
for r in reports:
    for name, d in r["evasion"].items():
        ev[name].update({k: d[k] for k in ("positives", "detected", "negatives", "false_positives")})
    for name, d in r["blocked_by_source"].items():
        blk[name].update({k: d[k] for k in ("negatives", "false_positives")})
print("\nrecall / fpr under evasion transforms")
clean = ev["clean"]["detected"] / max(ev["clean"]["positives"], 1)
for name, d in sorted(ev.items()):
    rec = d["detected"] / max(d["positives"], 1)
    fpr = d["false_positives"] / max(d["negatives"], 1)
    print(f"{name:12} recall {rec:.3f} ({(rec - clean) * 100:+.1f} pts)  fpr {fpr:.3f}")
x = blk.get("xstest")
if x:
    print(f"\nxstest safe prompts blocked: {x['false_positives']}/{x['negatives']} = {x['false_positives'] / max(x['negatives'], 1):.3f}")
PY
