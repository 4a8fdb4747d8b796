"""The bundled sample data: provenance, counts, the HH split, and the reproducible SQuALITY derivation."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from rlhf_assets.preference import sample_data as sd
from rlhf_assets.preference.schema import FIELD_NAMES, LABELS, pair_id

HH_SHA256 = "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03"
HH_FALLBACK_ROWS = (1254, 1688, 1950, 1952, 2036)


def _shared_squality_dir() -> Path | None:
    candidates = []
    if os.environ.get("RLHF_SHARED_DATA"):
        candidates.append(Path(os.environ["RLHF_SHARED_DATA"]))
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo / "shared" / "data", repo.parent / "shared" / "data", Path("/work/shared/data")]
    for c in candidates:
        d = c / "squality-human-eval"
        if (d / "all-responses.jsonl").is_file() and (d / "test.jsonl").is_file():
            return d
    return None


@pytest.fixture(scope="module")
def hh_raw() -> list[dict]:
    with gzip.open(sd.sample_data_dir() / sd.HH_FILE, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def squality() -> list[dict]:
    return sd.load_squality_comparisons()


def test_bundled_files_present_and_small():
    root = sd.sample_data_dir()
    for rel in (
        "README.md",
        "hh-rlhf-harmless/test.jsonl.gz",
        "hh-rlhf-harmless/LICENSE",
        "squality/pairwise.jsonl.gz",
        "squality/LICENSE",
        "squality/GUTENBERG_LICENSE",
    ):
        assert (root / rel).is_file(), rel
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 1_500_000


def test_hh_file_is_the_unchanged_upstream_copy():
    data = (sd.sample_data_dir() / sd.HH_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == HH_SHA256


def test_readme_checksums_match_bundled_files():
    readme = (sd.sample_data_dir() / "README.md").read_text(encoding="utf-8")
    for rel in ("hh-rlhf-harmless/test.jsonl.gz", "squality/pairwise.jsonl.gz"):
        digest = hashlib.sha256((sd.sample_data_dir() / rel).read_bytes()).hexdigest()
        assert digest in readme, rel


def test_hh_pairs_counts_and_fallback(caplog):
    with caplog.at_level(logging.WARNING, logger=sd.__name__):
        pairs = sd.load_hh_pairs()
    assert len(pairs) == 2312
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    assert "5 of 2312" in caplog.text
    _, stats = sd.load_hh_pairs_with_stats()
    assert stats.n_rows == 2312
    assert stats.n_common_prefix == 5
    assert stats.common_prefix_rows == HH_FALLBACK_ROWS


def test_hh_limit():
    assert len(sd.load_hh_pairs(limit=10)) == 10
    assert sd.load_hh_pairs(limit=0) == []
    assert sd.load_hh_pairs(limit=3) == sd.load_hh_pairs()[:3]


def test_hh_prompt_plus_response_reconstructs_transcript(hh_raw):
    pairs = sd.load_hh_pairs()
    assert len(pairs) == len(hh_raw)
    for i, (p, raw) in enumerate(zip(pairs, hh_raw)):
        for key in ("chosen", "rejected"):
            original = raw[key]
            assert original.startswith(p["prompt"]), (i, key)
            rest = original[len(p["prompt"]) :]
            sep = rest[: len(rest) - len(rest.lstrip())]
            assert sep.strip() == "", (i, key)
            assert p["prompt"] + sep + p[key] == original, (i, key)
            assert not p[key][:1].isspace()
        if i not in HH_FALLBACK_ROWS:
            assert p["prompt"].endswith(sd.ASSISTANT_MARKER)
            assert p["prompt"] == raw["chosen"][: raw["chosen"].rfind(sd.ASSISTANT_MARKER) + len(sd.ASSISTANT_MARKER)]
        assert p["chosen"] != p["rejected"], i


def test_split_fallback_uses_longest_common_prefix():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao"
    rejected = "\n\nHuman: hi\n\nAssistant: go away"
    pair, fallback = sd.split_hh_transcripts(chosen, rejected)
    assert fallback
    assert pair == {
        "prompt": "\n\nHuman: hi\n\nAssistant:",
        "chosen": "hello\n\nHuman: bye\n\nAssistant: ciao",
        "rejected": "go away",
    }
    pair, fallback = sd.split_hh_transcripts("\n\nHuman: x\n\nAssistant: a", "\n\nHuman: x\n\nAssistant:  b")
    assert not fallback and pair == {"prompt": "\n\nHuman: x\n\nAssistant:", "chosen": "a", "rejected": "b"}


def test_squality_counts(squality):
    assert len(squality) == 900
    assert Counter(r["annotator_id"] for r in squality) == {"2": 225, "3": 225, "6": 225, "8": 225}
    assert len({r["comparison_id"] for r in squality}) == 900
    pids = Counter(pair_id(r["prompt"], r["response_a"], r["response_b"]) for r in squality)
    assert len(pids) == 300
    assert set(pids.values()) == {3}
    by_pair: dict[str, set] = {}
    for r in squality:
        by_pair.setdefault(pair_id(r["prompt"], r["response_a"], r["response_b"]), set()).add(r["annotator_id"])
    assert all(len(v) == 3 for v in by_pair.values())


def test_squality_records_follow_the_schema(squality):
    for r in squality:
        assert list(r) == [f for f in FIELD_NAMES if f in r]
        assert set(r) == {
            "comparison_id", "prompt", "response_a", "response_b", "label", "annotator_id", "batch_id",
            "policy_a", "policy_b",
        }
        assert r["label"] in LABELS and r["label"] != "tie"
        assert r["batch_id"] == "squality-human-eval"
        assert {r["policy_a"], r["policy_b"]} <= set(sd.SQUALITY_SYSTEMS) and r["policy_a"] != r["policy_b"]
        assert r["response_a"] != r["response_b"]
        assert r["comparison_id"].startswith("squality-") and r["comparison_id"].endswith(
            f"-{r['annotator_id']}-{r['policy_a']}-{r['policy_b']}"
        )
        assert "[story truncated; full text: Project Gutenberg passage " in r["prompt"]
        assert "\n\nQuestion: " in r["prompt"]
        story = r["prompt"].split("\n[story truncated", 1)[0]
        assert len(story) == len("Story:\n") + sd.SQUALITY_STORY_CHARS
    # both shown orders occur for every system pair
    orders = Counter((r["policy_a"], r["policy_b"]) for r in squality)
    assert len(orders) == 6 and min(orders.values()) > 100


def test_squality_matches_documented_statistics(squality):
    human = [r for r in squality if "human" in (r["policy_a"], r["policy_b"])]
    human_wins = sum((r["policy_a"] if r["label"] == "a" else r["policy_b"]) == "human" for r in human)
    assert len(human) == 600
    assert round(human_wins / len(human), 3) == 0.987
    winners: dict[str, set] = {}
    for r in squality:
        win = r["response_a"] if r["label"] == "a" else r["response_b"]
        winners.setdefault(pair_id(r["prompt"], r["response_a"], r["response_b"]), set()).add(win)
    assert round(sum(len(w) == 1 for w in winners.values()) / 300, 3) == 0.807


def test_squality_rebuild_equals_bundled(tmp_path):
    src = _shared_squality_dir()
    if src is None:
        pytest.skip("shared SQuALITY source data not available")
    out = tmp_path / "pairwise.jsonl.gz"
    assert sd.build_squality_pairs(src, out) == 900
    bundled = sd.sample_data_dir() / sd.SQUALITY_FILE
    # compare the content (gzip bytes may differ across zlib builds); same zlib -> same bytes too
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(bundled.read_bytes())
    assert sd.build_squality_pairs(src, tmp_path / "again.jsonl.gz") == 900
    assert (tmp_path / "again.jsonl.gz").read_bytes() == out.read_bytes()
