"""Where the queue's new pairs come from.

* **The production release** (registry alias ``production``): prompts of the release's pinned dataset (its train
  split), each answered once by the release's policy and once by its reference (the SFT policy it was trained
  from), sampled like the policy was trained (temperature, token limits of its training config) unless the
  settings say otherwise. ``policy_a`` / ``policy_b`` are the two artifact ids.
* **Fallback, before anything is in production**: pairs of the bundled HH-RLHF sample (preference/sample_data.py),
  in a random left/right order; the asset's metadata says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import polars as pl

from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.storage import Storage

SAMPLE_SOURCE = "sample-data:hh-rlhf-harmless"


@dataclass
class NewPairs:
    pairs: pl.DataFrame  # prompt, response_a, response_b, policy_a, policy_b, temperature
    source: str          # "release <key>" or the sample data
    note: str            # one line for the metadata


def production_release(storage: Storage) -> dict | None:
    """The production alias's holder when it has a policy, its SFT reference and a pinned dataset; else None."""
    from rlhf_assets.registry.aliases import Registry

    holder = Registry(storage).current("production")
    artifacts = (holder or {}).get("artifacts") or {}
    if not (artifacts.get("policy") and artifacts.get("sft_policy")):
        return None
    if not storage.exists(storage.path("registry", "releases", f"{holder['release']}.dataset.json")):
        return None
    return holder


def release_pairs(storage: Storage, day: str, n: int, settings: AnnotationSettings, holder: dict) -> NewPairs:
    """``n`` pairs (policy vs reference) on prompts of the production release's dataset."""
    from rlhf_assets.policy.samples import sample_answers
    from rlhf_assets.preference.snapshot import load_or_build_snapshot, split_prompts
    from rlhf_assets.registry.artifacts import ArtifactStore

    release = holder["release"]
    table = load_or_build_snapshot(storage, release, "", {}).table  # the pinned snapshot (the pointer exists)
    prompts = split_prompts(table, "train") or split_prompts(table, "test")
    rng = random.Random(f"{settings.seed}/{day}/prompts")
    prompts = rng.sample(prompts, min(n, len(prompts)))
    store = ArtifactStore(storage)
    policy_id, reference_id = holder["artifacts"]["policy"], holder["artifacts"]["sft_policy"]
    responses = {}
    temperature = settings.temperature
    for name, artifact in (("policy", policy_id), ("reference", reference_id)):
        responses[name], temperature = sample_answers(store, artifact, prompts, seed=rng.getrandbits(31),
                                                      temperature=settings.temperature,
                                                      max_new_tokens=settings.max_new_tokens)
    rows = [{"prompt": p, "response_a": a, "response_b": b, "policy_a": policy_id, "policy_b": reference_id,
             "temperature": temperature}
            for p, a, b in zip(prompts, responses["policy"], responses["reference"])
            if a.strip() and b.strip() and a != b]
    dropped = len(prompts) - len(rows)
    return NewPairs(pl.DataFrame(rows, schema=_SCHEMA), f"release {release}",
                    f"production release {release}: its policy ({policy_id[:12]}) vs its reference "
                    f"({reference_id[:12]}) on {len(prompts)} prompts of its dataset"
                    + (f"; {dropped} dropped (an empty or identical answer)" if dropped else ""))


_SCHEMA = {"prompt": pl.String, "response_a": pl.String, "response_b": pl.String, "policy_a": pl.String,
           "policy_b": pl.String, "temperature": pl.Float64}


def sample_pairs(day: str, n: int, settings: AnnotationSettings, exclude: set[str]) -> NewPairs:
    """``n`` pairs of the bundled HH sample not in ``exclude`` (item ids queued before), in a random orientation."""
    from rlhf_assets.preference.sample_data import load_hh_pairs
    from rlhf_assets.preference.schema import pair_id

    rng = random.Random(f"{settings.seed}/{day}/sample")
    source = load_hh_pairs()
    order = list(range(len(source)))
    rng.shuffle(order)
    rows = []
    for i in order:
        p = source[i]
        if (p["chosen"] == p["rejected"] or not p["chosen"].strip() or not p["rejected"].strip()
                or pair_id(p["prompt"], p["chosen"], p["rejected"]) in exclude):
            continue
        a, b = (p["chosen"], p["rejected"]) if rng.random() < 0.5 else (p["rejected"], p["chosen"])
        rows.append({"prompt": p["prompt"], "response_a": a, "response_b": b, "policy_a": SAMPLE_SOURCE,
                     "policy_b": SAMPLE_SOURCE, "temperature": None})
        if len(rows) >= n:
            break
    return NewPairs(pl.DataFrame(rows, schema=_SCHEMA), SAMPLE_SOURCE,
                    "no production release yet: pairs from the bundled HH-RLHF sample (preference/sample_data.py)")


def new_pairs(storage: Storage, day: str, settings: AnnotationSettings, exclude: set[str]) -> NewPairs:
    """The production release's pairs when there is one, else the sample data's."""
    holder = production_release(storage)
    if holder is not None:
        return release_pairs(storage, day, settings.pairs_per_day, settings, holder)
    return sample_pairs(day, settings.pairs_per_day, settings, exclude)
