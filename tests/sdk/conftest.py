"""Fixtures for the SDK wire-contract tests.

One real `stormwall serve` process per test session, on free loopback ports, with a
temporary SQLite store and the built-in mock upstream (no network). Keys are made the way a
user makes them: with the `stormwall keys create --json` CLI. Every secret minted during the
session is remembered, so the session can prove none of them ever reached the server log.

The binary is `$STORMWALL_BIN`, else `$CARGO_TARGET_DIR/debug/stormwall`, else
`target/debug/stormwall` (scripts/test builds it first).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IPDB = REPO / "tests" / "data" / "ip2asn-test.tsv"
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "dall-e-3"]
STARTUP_TIMEOUT_SECS = 30.0
SHUTDOWN_TIMEOUT_SECS = 30.0
# Last bytes of the server log attached to a failing test's report.
LOG_TAIL_BYTES = 20_000

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def binary() -> Path:
    if os.environ.get("STORMWALL_BIN"):
        return Path(os.environ["STORMWALL_BIN"]).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "stormwall"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def well_formed_unknown_key() -> str:
    """A key in Stormwall's format with a valid checksum that no gateway ever issued.

    Mirrors `swk_<id:12>_<secret:32><crc:6>` from stormwall-types: the gateway accepts its
    shape and must then refuse it as unknown, not as malformed.
    """
    rand = lambda n: "".join(secrets.choice(BASE62) for _ in range(n))  # noqa: E731
    head = f"swk_{rand(12)}_{rand(32)}"
    crc = zlib.crc32(head.encode())
    check = ""
    for _ in range(6):
        check = BASE62[crc % 62] + check
        crc //= 62
    return head + check


def config_text(proxy_port: int, admin_port: int, db: Path) -> str:
    """examples/local.toml, with this session's ports, store and absolute IP database."""
    models = ", ".join(json.dumps(m) for m in MODELS)
    return f"""\
[server]
listen = "127.0.0.1:{proxy_port}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token_env = "STORMWALL_ADMIN_TOKEN"

[store]
backend = "sqlite"
path = {json.dumps(str(db))}

[ipdb]
path = {json.dumps(str(IPDB))}

[[upstreams]]
name = "mock"
kind = "mock"
models = [{models}]
"""


@dataclass
class Gateway:
    """A running `stormwall serve` and the CLI pointed at it."""

    proc: subprocess.Popen
    proxy_url: str
    admin_url: str
    config: Path
    log: Path
    token: str
    env: dict
    secrets: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # Test reports print fixtures; keep the token and keys out of them like any log.
        return f"Gateway(proxy={self.proxy_url}, admin={self.admin_url}, log={self.log})"

    @property
    def openai_base_url(self) -> str:
        return f"{self.proxy_url}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Runs `stormwall ARGS...` with the admin token in the environment; must exit 0."""
        r = subprocess.run(
            [str(binary()), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, (
            f"stormwall {' '.join(args)} exited {r.returncode}\n"
            f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        )
        return r

    def create_key(self, tenant: str = "sdk-tests", *flags: str, via_url: bool = False) -> dict:
        """`stormwall keys create --json`; returns the JSON object (`key` is the secret)."""
        target = ["--admin-url", self.admin_url] if via_url else ["--config", str(self.config)]
        r = self.cli("keys", "create", "--tenant", tenant, "--json", *target, *flags)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1, f"--json must print one JSON object, got:\n{r.stdout}"
        created = json.loads(lines[0])
        assert created["key"].startswith("swk_"), created
        assert created["id"] in created["key"], created
        self.secrets.append(created["key"])
        return created

    def revoke(self, key_id: str) -> dict:
        r = self.cli("keys", "revoke", key_id, "--admin-url", self.admin_url, "--json",
                     "--reason", "sdk test")
        return json.loads(r.stdout)

    def leaked_secrets(self) -> list[str]:
        """Secrets (keys and the admin token) that appear anywhere in the server log."""
        text = self.log_text()
        # The random part alone must not leak either: only the public id and last 4 may.
        found = [
            f"key {s.split('_')[1]}"
            for s in self.secrets
            if s in text or s.split("_")[2][:32] in text
        ]
        if self.token in text:
            found.append("the admin token")
        return found


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _start(tmp: Path, env: dict, token: str) -> Gateway:
    proxy_port, admin_port = free_port(), free_port()
    while admin_port == proxy_port:
        admin_port = free_port()
    config = tmp / "stormwall.toml"
    config.write_text(config_text(proxy_port, admin_port, tmp / "stormwall.db"))
    log = tmp / "serve.log"
    with open(log, "ab") as out:
        out.write(f"--- starting on {proxy_port}/{admin_port}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [
                str(binary()),
                "serve",
                "--config", str(config),
                "--listen", f"127.0.0.1:{proxy_port}",
                "--admin-listen", f"127.0.0.1:{admin_port}",
            ],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    gw = Gateway(
        proc=proc,
        proxy_url=f"http://127.0.0.1:{proxy_port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        config=config,
        log=log,
        token=token,
        env=env,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stormwall serve exited {proc.returncode} during startup")
        try:
            if _get(f"{gw.admin_url}/healthz") == 200:
                return gw
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"stormwall serve did not answer /healthz in {STARTUP_TIMEOUT_SECS}s")


_GATEWAY: Gateway | None = None


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> Gateway:
    global _GATEWAY
    exe = binary()
    if not exe.is_file():
        pytest.exit(f"{exe} not found: run `cargo build -p stormwall` (or scripts/test) first",
                    returncode=2)
    tmp = tmp_path_factory.mktemp("stormwall")
    token = "admin-" + secrets.token_urlsafe(24)
    # No STORMWALL_* from the caller may change what is tested (STORMWALL_CONFIG, say), except
    # the log filter (`STORMWALL_LOG=debug pytest ...` also proves debug logs keep no secret)
    # and the STORMWALL_TEST_* service addresses CI passes through.
    passed = ("STORMWALL_LOG", "STORMWALL_TEST_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STORMWALL_") or k.startswith(passed)
    }
    env["STORMWALL_ADMIN_TOKEN"] = token
    env["NO_COLOR"] = "1"
    # Another test run may grab a port between our probe and the bind: try a few times.
    gw, last_error = None, None
    for _ in range(3):
        try:
            gw = _start(tmp, env, token)
            break
        except RuntimeError as e:
            last_error = e
    if gw is None:
        log = (tmp / "serve.log").read_text(errors="replace")
        pytest.fail(f"{last_error}\n--- stormwall serve log ---\n{log}", pytrace=False)
    _GATEWAY = gw
    yield gw
    _GATEWAY = None

    gw.proc.send_signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(timeout=SHUTDOWN_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()
        pytest.fail(f"stormwall serve ignored SIGTERM for {SHUTDOWN_TIMEOUT_SECS}s\n"
                    f"--- log ---\n{gw.log_text()}", pytrace=False)
    assert code == 0, f"stormwall serve exited {code} on SIGTERM\n--- log ---\n{gw.log_text()}"
    leaked = gw.leaked_secrets()
    assert not leaked, f"secrets found in the server log: {', '.join(leaked)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the tail of the server log to every failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _GATEWAY is not None:
        text = _GATEWAY.log_text()[-LOG_TAIL_BYTES:]
        report.sections.append(("stormwall serve log (tail)", text))
