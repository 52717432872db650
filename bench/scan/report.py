#!/usr/bin/env python3
"""Turns bench/scan/out (measurements.jsonl, tool outputs, manifest.jsonl) into a Markdown
table: throughput, CPU efficiency, peak memory, planted keys found at the right line and
named by provider, and other findings (in real source: test fixtures, or false alarms)."""
import json
import os
import sys

PROVIDER_TOKENS = {
    "stormwall": ["stormwall"], "openai": ["openai"], "azure": ["azure"],
    "anthropic": ["anthropic"], "google": ["google", "gcp", "gemini"],
    "aws": ["aws", "amazon", "bedrock"], "huggingface": ["hugging"], "groq": ["groq"],
    "replicate": ["replicate"], "openrouter": ["openrouter"], "perplexity": ["perplexity"],
    "xai": ["xai", "grok"], "deepseek": ["deepseek"], "mistral": ["mistral"],
    "cohere": ["cohere"], "together": ["together"], "fireworks": ["fireworks"],
    "elevenlabs": ["eleven"], "stability": ["stability"], "langsmith": ["langsmith", "langchain"],
    "cloudflare": ["cloudflare"], "github": ["github"],
}


def provider_tokens(rule):
    return PROVIDER_TOKENS.get(rule.split("-")[0], [rule.split("-")[0]])


def corpus_bytes(d):
    total = 0
    for root, dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            if f != ".secretlintrc.json" and os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def norm(path, d):
    if os.path.isabs(path):
        path = os.path.relpath(path, d)
    return path[2:] if path.startswith("./") else path


def findings(tool, out, label, d):
    """(path, line, label-text) triples reported by a tool."""
    res = []
    if tool == "stormwall":
        with open(os.path.join(out, f"stormwall-{label}.jsonl")) as f:
            for line in f:
                j = json.loads(line)
                res.append((norm(j["path"], d), j["line"], j["rule"] + " " + j["provider"]))
    elif tool == "detect-secrets":
        with open(os.path.join(out, f"detect-secrets-{label}.json")) as f:
            j = json.load(f)
        for path, items in j.get("results", {}).items():
            for it in items:
                res.append((norm(path, d), it["line_number"], it["type"]))
    elif tool == "secretlint":
        with open(os.path.join(out, f"secretlint-{label}.json")) as f:
            text = f.read().strip()
        j = json.loads(text) if text else []
        for r in j:
            for m in r.get("messages", []):
                line = m.get("loc", {}).get("start", {}).get("line", 0)
                res.append((norm(r["filePath"], d), line, f'{m.get("ruleId", "")} {m.get("messageId", "")}'))
    return res


def main():
    out = sys.argv[1]
    planted = [json.loads(l) for l in open(os.path.join(out, "manifest.jsonl"))]
    rows = []
    for line in open(os.path.join(out, "measurements.jsonl")):
        m = json.loads(line)
        size = corpus_bytes(m["dir"])
        cpu = m["user_s"] + m["sys_s"]
        try:
            found = findings(m["tool"], out, m["corpus"], m["dir"])
        except (OSError, ValueError) as e:
            found = []
            m["stderr_tail"] = f"could not read output: {e}"
        at = {}
        for p, l, lab in found:
            at.setdefault((p, l), []).append(lab.lower())
        hit = by_provider = 0
        for p in planted:
            labels = at.get((p["path"], p["line"]), [])
            if labels:
                hit += 1
                if any(t in lab for lab in labels for t in provider_tokens(p["rule"])):
                    by_provider += 1
        keys = {(p["path"], p["line"]) for p in planted}
        other = sum(1 for p, l, _ in found if (p, l) not in keys)
        rows.append((m["tool"], m["corpus"], size / 1e6, m["wall_s"], cpu,
                     size / 1e6 / max(m["wall_s"], 1e-9), size / 1e6 / max(cpu, 1e-9),
                     m["max_rss_kib"] / 1024, hit, by_provider, len(planted), other, m["exit"]))
    print("| tool | corpus | MB | wall s | CPU s | MB/s | MB per CPU s | peak RSS MB | planted found | by provider | other findings | exit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.0f} | {r[8]}/{r[10]} | {r[9]}/{r[10]} | {r[11]} | {r[12]} |")


if __name__ == "__main__":
    main()
