# Sourced by bench/strace-wakes.sh and bench/callgrind-per-request.sh: starts the mock
# upstream and writes a one-gateway config for it. After sourcing: ROOT, BIN (release
# testkit binaries), D (scratch directory), MP (mock's pid), P and A (the gateway's proxy
# and admin ports), and $D/sw.toml (with `[journal] enabled = false` when JOURNAL=off).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release"
D=$(mktemp -d)
"$BIN/stormwall-mock" --listen 127.0.0.1:0 >"$D/mock.out" 2>&1 &
MP=$!
sleep 0.5
MOCK_URL="$(awk '/^listening on / {print $3; exit}' "$D/mock.out")"
P=$((20000 + RANDOM % 20000)); A=$((P + 1))
cat >"$D/sw.toml" <<EOT
[server]
listen = "127.0.0.1:$P"
admin_listen = "127.0.0.1:$A"
admin_token_env = "STORMWALL_ADMIN_TOKEN"
[store]
backend = "sqlite"
path = "$D/sw.db"
[ipdb]
path = "$ROOT/tests/data/ip2asn-test.tsv"
[[upstreams]]
name = "mock"
kind = "openai"
base_url = "$MOCK_URL/v1"
api_key_env = "MOCK_UPSTREAM_KEY"
models = ["gpt-4o-mini"]
EOT
if [[ "${JOURNAL:-on}" == off ]]; then printf '[journal]\nenabled = false\n' >>"$D/sw.toml"; fi
