"""A release's distilled reward model: distil, measure fidelity and speed against the teacher, store the student.

What ``rm_distilled`` runs (the asset is a thin wrapper; no Dagster here). Train on the release's ``train`` pairs
(+ unlabelled policy samples when given), calibrate the student on ``validation``, measure on ``test``:
accuracy, ECE (raw and calibrated), correlation with the teacher, an untrained student of the same size as the
baseline, scoring latency / throughput of both (:func:`~rlhf_assets.reward.scoring_speed.scoring_speed`, measured on
this machine, not asserted), and the student → teacher cascade at the configured band.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.artifact_payload import read_config
from rlhf_assets.code_version import code_version
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import ARTIFACT_FORMAT, RewardScorer, load_reward_model, save_reward_model
from rlhf_assets.reward.calibration import calibrator_from_dict
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.data import PreferencePair
from rlhf_assets.reward.distill import DistillSettings, build_student, distill, fidelity, n_parameters
from rlhf_assets.reward.evaluate import score_pairs
from rlhf_assets.reward.scoring_speed import scoring_speed
from rlhf_assets.serving.cascade import evaluate_cascade
from rlhf_assets.storage import Storage

ARTIFACT_KIND = "rm_distilled"
CALIBRATION_FILE = "calibration.json"  # the student's own Platt calibrator, beside its weights


def split_pairs(table: pl.DataFrame, split: str) -> list[PreferencePair]:
    rows = table.filter(pl.col("split") == split).select("prompt", "chosen", "rejected", "target", "weight")
    return [PreferencePair(r["prompt"], r["chosen"], r["rejected"], float(r["target"]), float(r["weight"]))
            for r in rows.iter_rows(named=True)]


def teacher_rm_config(artifact_dir: str | Path) -> RMConfig:
    _, doc = read_config(artifact_dir, ARTIFACT_FORMAT, "reward-model")
    return RMConfig.from_dict({k: v for k, v in doc["rm_config"].items() if k in RMConfig.field_names()})


def student_calibrator(artifact_dir: str | Path) -> dict[str, Any] | None:
    """The calibrator stored with a distilled student (None for an artifact without one)."""
    path = Path(artifact_dir) / CALIBRATION_FILE
    return json.loads(path.read_text()).get("calibrator") if path.exists() else None


def oriented_probabilities(scorer: RewardScorer, pairs: Sequence[PreferencePair], calibrator: Any,
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated P, label) of the pairs in a seeded random orientation (the same for every scorer)."""
    m = score_pairs(scorer, pairs)
    m = np.where(np.array([p.target for p in pairs]) < 0.5, -m, m)
    flip = np.random.default_rng(seed).random(m.size) < 0.5
    m = np.where(flip, -m, m)
    p = np.asarray(calibrator.predict(m), float) if calibrator is not None else 1 / (1 + np.exp(-m))
    return p, np.where(flip, 0.0, 1.0)


def production_policy_texts(storage: Storage, table: pl.DataFrame, n: int, seed: int
                            ) -> tuple[list[tuple[str, str]], str]:
    """Up to ``n`` of the release's train prompts, each answered once by the registry's production policy
    (policy/samples.py: as it was trained to sample), as (prompt, response) texts for the student; and a line for
    the metadata. None while nothing with a policy is in production."""
    import random

    from rlhf_assets.policy.samples import sample_answers
    from rlhf_assets.registry.aliases import Registry

    holder = Registry(storage).current("production")
    policy = ((holder or {}).get("artifacts") or {}).get("policy")
    if n <= 0 or not policy:
        return [], "no policy samples: " + ("policy_samples is 0" if n <= 0 else "no policy in production yet")
    prompts = sorted(set(table.filter(pl.col("split") == "train")["prompt"].to_list()))
    rng = random.Random(seed)
    prompts = rng.sample(prompts, min(n, len(prompts)))
    answers, _ = sample_answers(ArtifactStore(storage), policy, prompts, seed=rng.getrandbits(31))
    texts = [(p, a) for p, a in zip(prompts, answers) if a.strip()]
    return texts, (f"{len(texts)} answers of the production policy {policy[:12]} (release {holder['release']}) "
                   f"on {len(prompts)} train prompts" + (f"; {len(prompts) - len(texts)} empty ones dropped"
                                                         if len(texts) < len(prompts) else ""))


@dataclass
class DistillReport:
    artifact_id: str
    uri: str
    report: dict[str, Any]


def distill_release(storage: Storage, teacher_id: str, teacher_calibrator: dict[str, Any] | None,
                    table: pl.DataFrame, s: DistillSettings, *, dataset_id: str,
                    extra_texts: Sequence[tuple[str, str]] = (), release: str | None = None) -> DistillReport:
    store = ArtifactStore(storage)
    teacher_dir = store.get(teacher_id)
    teacher = load_reward_model(teacher_dir)
    train, val, test = (split_pairs(table, split) for split in ("train", "validation", "test"))
    if not test:
        raise ValueError("the preference dataset has no test pairs to measure the student on")
    result = distill(teacher, train, val, s, extra_texts)
    tok, max_length = teacher.tokenizer, teacher.max_length
    student = RewardScorer(result.student, tok, max_length)
    untrained = RewardScorer(build_student(teacher.net, s).eval(), tok, max_length)
    t_cal = calibrator_from_dict(teacher_calibrator) if teacher_calibrator else None
    rows = {"teacher": fidelity(teacher, teacher, test, t_cal, seed=s.seed),
            "student": fidelity(student, teacher, test, result.calibrator, seed=s.seed),
            "untrained_student": fidelity(untrained, teacher, test, seed=s.seed)}
    k = min(s.bench_items, len(test))
    prompts, responses = [p.prompt for p in test[:k]], [p.chosen for p in test[:k]]
    speed = {"teacher": scoring_speed(teacher, prompts, responses), "student": scoring_speed(student, prompts, responses)}
    p_s, y = oriented_probabilities(student, test, result.calibrator, s.seed)
    p_t, _ = oriented_probabilities(teacher, test, t_cal, s.seed)
    cascade = evaluate_cascade(p_s, p_t, y, s.cascade_band, speed["student"]["cpu_s_per_1k_items"],
                               speed["teacher"]["cpu_s_per_1k_items"])
    report = {
        "fidelity": rows, "speed": speed, "cascade": cascade,
        "n_parameters": {"teacher": n_parameters(teacher.net), "student": n_parameters(result.student)},
        "training": {"cpu_s": result.train_cpu_s, "wall_s": result.train_wall_s, "steps": result.steps,
                     "final_loss": result.final_loss, "n_train_pairs": len(train), "n_extra_texts": len(extra_texts)},
        "n_test_pairs": len(test), "settings": s.to_dict(),
    }
    manifest = {"dataset_id": dataset_id, "parent_ids": [teacher_id], "code_version": code_version(),
                "release": release, "metrics": {f"test_{k}": v for k, v in rows["student"].items()},
                "distill": report}
    with tempfile.TemporaryDirectory() as tmp:
        payload = save_reward_model(result.student, tok, teacher_rm_config(teacher_dir), Path(tmp) / "payload")
        calibrator = result.calibrator.to_dict() if result.calibrator is not None else None
        (payload / CALIBRATION_FILE).write_text(json.dumps({"calibrator": calibrator}))
        ref = store.put_dir(payload, kind=ARTIFACT_KIND, manifest=json.loads(json.dumps(manifest, default=float)))
    return DistillReport(ref.id, ref.uri, report)
