"""The preference snapshot's splits: train / validation / judge / test by a hash of the prompt — every prompt in
exactly one split (the judge's prompts are disjoint from the pairs the proxy reward model and PPO train on), the
same assignment on every build, whatever the row order, and the documented default shares."""

import io
from dataclasses import dataclass

import polars as pl
import pytest

from rlhf_assets.preference.snapshot import SPLITS, UPSTREAM_ASSET, SnapshotSettings, build_snapshot, prompt_bucket
from rlhf_assets.storage import sha256_bytes, table_manifest

N_PROMPTS, PAIRS_PER_PROMPT = 1500, 2


def aggregated_day(seed: int) -> pl.DataFrame:
    """Aggregated labels with several pairs per prompt (a split by pair would put one prompt in two splits)."""
    rows = [{"pair_id": f"p{k}-{j}", "prompt": f"Human: question {k}?\n\nAssistant:",
             "response_a": f"answer {j} to {k}", "response_b": f"other answer {j} to {k}",
             "label": "a" if (k + j) % 3 else "b", "p_a": 0.8, "p_b": 0.15, "p_tie": 0.05, "share_a": 0.7,
             "n_votes": 3, "confidence": 0.9} for k in range(N_PROMPTS) for j in range(PAIRS_PER_PROMPT)]
    return pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=seed)


@dataclass
class StoredDay:
    """An upstream day as build_snapshot reads it: its table manifest and its bytes."""

    manifest: dict
    data: bytes

    def read_bytes(self) -> bytes:
        return self.data


def upstream(day: str, frame: pl.DataFrame) -> dict[str, StoredDay]:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    data = buf.getvalue()
    return {day: StoredDay(table_manifest(UPSTREAM_ASSET, day, sha256_bytes(data), frame.height, frame.columns), data)}


def splits_of(table: pl.DataFrame) -> dict[str, str]:
    return dict(zip(table["pair_id"], table["split"]))


def test_judge_split_is_disjoint_by_prompt_and_deterministic():
    a = upstream("2025-06-01", aggregated_day(seed=1))
    b = upstream("2025-06-01", aggregated_day(seed=2))  # the same pairs in another row order
    first, second = build_snapshot(a, "2025-06-01"), build_snapshot(b, "2025-06-01")
    table = first.table
    assert set(table["split"].unique()) == set(SPLITS)
    # each prompt is in one split only: the judge never shares a prompt with train / validation / test
    per_prompt = table.group_by("prompt").agg(pl.col("split").n_unique().alias("n"))
    assert per_prompt["n"].max() == 1
    judge_prompts = set(table.filter(pl.col("split") == "judge")["prompt"])
    other_prompts = set(table.filter(pl.col("split") != "judge")["prompt"])
    assert judge_prompts and not judge_prompts & other_prompts
    # deterministic: the same pairs get the same splits whatever the row order, and the same build the same id
    assert splits_of(second.table) == splits_of(table)
    again = build_snapshot(a, "2025-06-01")
    assert splits_of(again.table) == splits_of(table) and again.dataset_id == first.dataset_id
    # the documented defaults: train 0.6 / validation 0.1 / judge 0.2 / test 0.1 of the prompts
    share = {s: n / N_PROMPTS for s, n in table.select("prompt", "split").unique().group_by("split").len().iter_rows()}
    expected = {"train": 0.6, "validation": 0.1, "judge": 0.2, "test": 0.1}
    for split, value in expected.items():
        assert share[split] == pytest.approx(value, abs=0.04), (split, share)
    assert first.manifest["splits"] == {s: int((table["split"] == s).sum()) for s in SPLITS}


def test_without_a_judge_split_the_other_splits_are_the_former_ones():
    """judge_fraction = 0 (with the former 0.8 / 0.1 fractions) is the former split, pair for pair; and a judge
    fraction takes its prompts from the bucket range after validation: train and validation stay as they were."""
    days = upstream("2025-06-01", aggregated_day(seed=1))
    former_settings = SnapshotSettings(train_fraction=0.8, validation_fraction=0.1, judge_fraction=0.0)
    former = build_snapshot(days, "2025-06-01", former_settings).table
    assert "judge" not in set(former["split"])
    bucket = former.select(prompt_bucket(pl.col("prompt")).alias("b"))["b"]
    old_rule = ["train" if x < 0.8 else "validation" if x < 0.9 else "test" for x in bucket]
    assert former["split"].to_list() == old_rule
    with_judge = build_snapshot(days, "2025-06-01").table
    no_judge = build_snapshot(days, "2025-06-01", SnapshotSettings(judge_fraction=0.0)).table

    def pairs(t, split):
        return set(t.filter(pl.col("split") == split)["pair_id"])

    for split in ("train", "validation"):
        assert pairs(with_judge, split) == pairs(no_judge, split)
    assert pairs(with_judge, "judge") and pairs(with_judge, "judge") < pairs(no_judge, "test")


@pytest.mark.parametrize("kwargs", [{"train_fraction": 0.7, "validation_fraction": 0.1, "judge_fraction": 0.3},
                                    {"judge_fraction": -0.1}, {"judge_fraction": 1.0}])
def test_split_fractions_are_validated(kwargs):
    with pytest.raises(ValueError, match="judge_fraction"):
        SnapshotSettings(**kwargs)


def test_preference_dataset_config_exposes_the_judge_fraction():
    from rlhf_assets.defs.reward.preference_dataset import PreferenceDatasetConfig

    config = PreferenceDatasetConfig(judge_fraction=0.25, train_fraction=0.55)
    assert SnapshotSettings(**config.model_dump()).judge_fraction == 0.25
    assert PreferenceDatasetConfig().judge_fraction == SnapshotSettings().judge_fraction > 0
