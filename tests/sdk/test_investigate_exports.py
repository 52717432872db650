"""Sharing formats checked by their reference tools: the STIX 2.1 bundle of
`stormwall investigate export --stix` passes the OASIS `stix2-validator` with no errors, and
its MISP event loads in PyMISP with its attributes, objects and ATLAS galaxy tags.

The data is the simulator's network scenario (`investigate evaluate --events-out`), read
back with `--events`, so no store or server is needed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pymisp import MISPEvent
from stix2validator import ValidationOptions, validate_file

from conftest import binary


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("investigate")
    events = d / "events.jsonl"
    subprocess.run(
        [binary(), "investigate", "evaluate", "--seed", "1", "--legit-keys", "60",
         "--events-out", str(events)],
        check=True, capture_output=True, timeout=600,
    )
    out = {"stix": d / "bundle.json", "misp": d / "misp.json", "csv": d / "roles.csv"}
    subprocess.run(
        [binary(), "investigate", "export", "--events", str(events),
         "--overrides", str(d / "none.json"),
         "--stix", str(out["stix"]), "--misp", str(out["misp"]), "--csv", str(out["csv"])],
        check=True, capture_output=True, timeout=600,
    )
    return out


def test_stix_bundle_passes_the_oasis_validator(exports: dict[str, Path]) -> None:
    results = validate_file(str(exports["stix"]), ValidationOptions(version="2.1"))
    errors = [e for r in results.object_results for e in r.errors]
    assert results.is_valid, errors
    assert not errors, errors
    objects = json.loads(exports["stix"].read_text())["objects"]
    types = {o["type"] for o in objects}
    for t in ("identity", "intrusion-set", "threat-actor", "tool", "infrastructure",
              "indicator", "observed-data", "sighting", "attack-pattern", "relationship",
              "marking-definition"):
        assert t in types, t
    atlas = {r["external_id"] for o in objects if o["type"] == "attack-pattern"
             for r in o["external_references"]}
    assert atlas == {"AML.T0040", "AML.T0034", "AML.T0054", "AML.T0055", "AML.T0008.005"}
    # The simulator's events carry TLS fingerprints: the relays' are indicators, validated
    # with the rest.
    patterns = [o["pattern"] for o in objects if o["type"] == "indicator"]
    assert any("x-stormwall-tls-client:fingerprint" in p for p in patterns), patterns


def test_misp_event_loads_in_pymisp(exports: dict[str, Path]) -> None:
    event = MISPEvent()
    event.load_file(str(exports["misp"]))
    assert event.info.startswith("LLMjacking network")
    assert any(a.type == "ip-src" for a in event.attributes)
    assert any(a.type == "user-agent" for a in event.attributes)
    assert {o.name for o in event.objects} >= {"ip-port", "http-request"}
    tags = [t.name for t in event.tags]
    assert "tlp:amber" in tags
    assert any("AML.T0055" in t for t in tags)


def test_csv_has_one_row_per_role(exports: dict[str, Path]) -> None:
    lines = exports["csv"].read_text().splitlines()
    assert lines[0].startswith("role,entity_kind,entity,confidence")
    roles = {line.split(",")[0] for line in lines[1:]}
    assert roles == {"provider", "creator", "user", "victim"}
