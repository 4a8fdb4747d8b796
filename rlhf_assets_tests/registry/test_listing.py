"""``rlhf release list``: the JSON shape, decisions joined to releases, and the human-readable table."""

from __future__ import annotations

import json

import pytest

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.decisions import list_decisions, read_decision, write_decision
from rlhf_assets.registry.listing import format_listing, release_listing
from rlhf_assets.registry.releases import create_release
from rlhf_assets.storage import Storage


def arts(release: str) -> dict[str, str]:
    return {"reward_model": f"a{release}".ljust(64, "0"), "policy": f"b{release}".ljust(64, "0")}


@pytest.fixture
def storage(tmp_path):
    return Storage(tmp_path / "root")


def test_empty_listing(storage):
    listing = release_listing(storage)
    assert listing == {"aliases": {"production": None, "canary": None}, "releases": [], "history": []}
    text = format_listing(listing)
    assert "(no releases)" in text and "history: (empty)" in text


def test_listing_shape(storage):
    r1, r2, r3 = "r20261124-0900", "r20261125-0900", "r20261126-0900"
    for key in (r1, r2, r3):
        create_release(storage, key)
    write_decision(storage, r1, {"verdict": "promote", "artifacts": arts(r1), "reasons": ["uplift > 0"]})
    write_decision(storage, r2, {"verdict": "canary", "artifacts": arts(r2)})
    write_decision(storage, "r20261127-0900-ui", {"verdict": "reject", "artifacts": {}})  # no release record
    reg = Registry(storage)
    reg.set_alias("production", r1, arts(r1), action="promote", reason="gates passed", actor="deployment_decision")
    reg.set_alias("canary", r2, arts(r2), action="canary", reason="CI straddles 0", actor="deployment_decision",
                  share=0.2)

    listing = release_listing(storage)
    assert json.loads(json.dumps(listing)) == listing  # plain JSON
    assert listing["aliases"] == {"production": r1, "canary": r2}
    assert listing["releases"] == [
        {"release": r1, "verdict": "promote", "artifacts": arts(r1)},
        {"release": r2, "verdict": "canary", "artifacts": arts(r2)},
        {"release": r3, "verdict": None, "artifacts": {}},
        {"release": "r20261127-0900-ui", "verdict": "reject", "artifacts": {}},
    ]
    assert [set(h) for h in listing["history"]] == [{"time", "alias", "release", "action", "reason"}] * 2
    assert [(h["alias"], h["release"], h["action"], h["reason"]) for h in listing["history"]] == [
        ("production", r1, "promote", "gates passed"), ("canary", r2, "canary", "CI straddles 0")]

    text = format_listing(listing, last=1)
    lines = text.splitlines()
    assert lines[0].split() == ["RELEASE", "VERDICT", "ALIAS", "ARTIFACTS"]
    assert lines[1].split()[:3] == [r1, "promote", "production"]
    assert lines[2].split()[:3] == [r2, "canary", "canary"]
    assert lines[3].split() == [r3, "-", "-", "-"]
    assert "history (last 1 of 2):" in text and "CI straddles 0" in text and "gates passed" not in text


def test_decision_records(storage):
    assert read_decision(storage, "r1") is None
    rec = write_decision(storage, "r1", {"verdict": "reject", "artifacts": arts("r1"), "reasons": ["ESS too low"]})
    assert rec["release"] == "r1" and read_decision(storage, "r1") == rec
    assert list_decisions(storage) == {"r1": rec}
    with pytest.raises(ValueError, match="verdict"):
        write_decision(storage, "r1", {"verdict": "ship it", "artifacts": {}})
    with pytest.raises(ValueError, match="not 'r2'"):
        write_decision(storage, "r2", {"release": "r1", "verdict": "promote", "artifacts": {}})
    with pytest.raises(ValueError, match="artifacts"):
        write_decision(storage, "r2", {"verdict": "promote"})
    with pytest.raises(ValueError, match="release key"):
        read_decision(storage, "../etc")
