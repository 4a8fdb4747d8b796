"""Distillation: a student trained against a teacher beats an untrained student of the same size, and the stored
student loads, scores and carries its calibrator. Tiny presets on a slice of the bundled HH-RLHF pairs."""

import tempfile

import numpy as np
import polars as pl
import pytest

from rlhf_assets.preference.sample_data import load_hh_pairs
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import RewardScorer, load_reward_model, save_reward_model
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.data import PreferencePair
from rlhf_assets.reward.distill import DistillSettings, distill, student_config
from rlhf_assets.reward.distill_release import ARTIFACT_KIND, distill_release, student_calibrator
from rlhf_assets.reward.network import build_reward_net
from rlhf_assets.storage import Storage

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def hh():
    return [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in load_hh_pairs(limit=260)]


@pytest.fixture(scope="module")
def teacher_store(hh, tmp_path_factory):
    """A store holding a tiny teacher: the 2-layer tiny preset, Bradley–Terry-trained on the first 200 pairs (through
    distill() with the teacher's own size and no regression term: the same loop, only the pairwise loss)."""
    cfg = RMConfig(preset="tiny", max_length=MAX_LENGTH, seed=0)
    net, tok = build_reward_net(cfg)
    start = RewardScorer(net.eval(), tok, MAX_LENGTH)
    fitted = distill(start, hh[:200], hh[200:220], DistillSettings(student_layers=2, student_hidden=None,
                                                                   regression_weight=0, epochs=3))
    root = tmp_path_factory.mktemp("distill")
    store = ArtifactStore(Storage(str(root)))
    with tempfile.TemporaryDirectory() as d:
        save_reward_model(fitted.student.eval(), tok, cfg, d)
        teacher_id = store.put_dir(d, kind="reward_model", manifest={}).id
    return root, teacher_id


def _table(hh):
    splits = ["train"] * 200 + ["validation"] * 20 + ["test"] * (len(hh) - 220)
    return pl.DataFrame({"split": splits, "prompt": [p.prompt for p in hh], "chosen": [p.chosen for p in hh],
                         "rejected": [p.rejected for p in hh], "target": [1.0] * len(hh), "weight": [1.0] * len(hh)})


def test_distilled_student_beats_an_untrained_one_and_is_stored(hh, teacher_store):
    root, teacher_id = teacher_store
    s = DistillSettings(student_layers=1, student_hidden=32, student_heads=2, epochs=3, bench_items=16,
                        cascade_band=0.1)
    out = distill_release(Storage(str(root)), teacher_id, None, _table(hh), s, dataset_id="d1", release="r1")
    fid = out.report["fidelity"]
    # the student learned the teacher: its scores correlate with the teacher's far better than an untrained one's
    assert fid["student"]["teacher_spearman"] > fid["untrained_student"]["teacher_spearman"] + 0.15, fid
    # (accuracy on 40 test pairs is too noisy to compare here; `rlhf bench cost-fidelity` reports it on more)
    assert out.report["n_parameters"]["student"] < out.report["n_parameters"]["teacher"] / 2
    for model in ("teacher", "student"):
        speed = out.report["speed"][model]
        assert speed["items_per_s"] > 0 and speed["batch_p99_ms"] >= speed["batch_p50_ms"] > 0
    cascade = out.report["cascade"]
    assert cascade["n"] == len(hh) - 220 and 0 <= cascade["n_escalated"] <= cascade["n"]
    assert cascade["cost_per_item"] >= out.report["speed"]["student"]["cpu_s_per_1k_items"]

    store = ArtifactStore(Storage(str(root)))
    manifest = store.manifest(out.artifact_id)
    assert manifest["kind"] == ARTIFACT_KIND and manifest["parent_ids"] == [teacher_id]
    d = store.get(out.artifact_id)
    scorer = load_reward_model(d)
    assert scorer.net.backbone.config.num_hidden_layers == 1 and scorer.net.backbone.config.hidden_size == 32
    scores = scorer.score([p.prompt for p in hh[:4]], [p.chosen for p in hh[:4]])
    assert np.isfinite(scores).all() and np.ptp(scores) > 0
    assert student_calibrator(d)["method"] == "platt"


def test_student_config_and_bad_settings():
    cfg, _ = build_reward_net(RMConfig(preset="tiny", max_length=MAX_LENGTH))
    small = student_config(cfg.backbone.config, DistillSettings(student_layers=1, student_hidden=32, student_heads=4))
    assert (small.num_hidden_layers, small.hidden_size, small.num_attention_heads, small.intermediate_size) == \
        (1, 32, 4, 64)
    assert cfg.backbone.config.num_hidden_layers == 2  # the teacher's config is left alone
    with pytest.raises(ValueError, match="must divide"):
        DistillSettings(student_hidden=30, student_heads=4)
    with pytest.raises(ValueError, match="nothing to learn"):
        DistillSettings(regression_weight=0, pair_weight=0)
    with pytest.raises(ValueError, match="at least one training pair"):
        distill(RewardScorer(cfg.eval(), build_reward_net(RMConfig())[1], MAX_LENGTH), [], [], DistillSettings())


@pytest.mark.slow
def test_rm_distilled_materializes_in_a_dagster_run(hh, teacher_store, tmp_path):
    """The asset in a real run (ephemeral instance): upstream references stand in for the release's reward model,
    calibration and dataset; the output names the stored student and the metadata carries the comparison."""
    import dagster as dg

    from rlhf_assets.defs.partitions import release_partitions
    from rlhf_assets.defs.resources import StorageResource
    from rlhf_assets.defs.reward.rm_distilled import rm_distilled
    from rlhf_assets.references import CalibrationRef, DatasetTable, ModelRef

    root, teacher_id = teacher_store

    @dg.asset(name="reward_model", partitions_def=release_partitions)
    def reward_model_ref():
        return ModelRef(artifact_id=teacher_id, kind="reward_model", dataset_id="d1")

    @dg.asset(name="rm_calibration", partitions_def=release_partitions)
    def calibration_ref():
        return CalibrationRef(reward_model_id=teacher_id, dataset_id="d1", calibration_artifact_id=None,
                              calibrator={"method": "platt", "slope": 1.0, "intercept": 0.0}, report={})

    @dg.asset(name="preference_dataset", partitions_def=release_partitions)
    def dataset():
        return DatasetTable(dataset_id="d1", table=_table(hh))

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(release_partitions.name, ["r1"])
    result = dg.materialize(
        [reward_model_ref, calibration_ref, dataset, rm_distilled], partition_key="r1", instance=instance,
        resources={"storage": StorageResource(root=str(root)),
                   "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))},
        run_config={"ops": {"rm_distilled": {"config": {"epochs": 1, "bench_items": 8}}}})
    assert result.success
    ref = result.output_for_node("rm_distilled")
    assert ref.kind == "rm_distilled" and ref.parents == (teacher_id,)
    assert ArtifactStore(Storage(str(root))).manifest(ref.artifact_id)["kind"] == "rm_distilled"
    meta = result.asset_materializations_for_node("rm_distilled")[0].metadata
    assert {"fidelity", "serving_speed", "cascade", "training_cpu_s"} <= set(meta)
    assert "no policy in production" in meta["policy_samples"].value
    assert [r.data["model"] for r in meta["fidelity"].value.records] == ["teacher", "student", "untrained_student"]


def test_policy_samples_are_the_production_policys_answers_on_the_release_train_prompts(hh, teacher_store, tmp_path):
    """rm_distilled's unlabelled texts: the production policy answers the release's train prompts (policy/samples.py,
    the annotation queue's sampling); none before a policy is in production; the student trains on them."""
    from rlhf_assets.reward.distill_release import production_policy_texts
    from rlhf_assets_tests.policy_serving.policy_support import make_policy_store

    store = make_policy_store(tmp_path / "root")
    storage = Storage(str(store.root))
    table = _table(hh)
    texts, note = production_policy_texts(storage, table, 6, seed=0)
    assert texts == [] and "no policy in production" in note
    store.promote("r20250601-2359", store.drifted)
    texts, note = production_policy_texts(storage, table, 6, seed=0)
    train_prompts = set(table.filter(pl.col("split") == "train")["prompt"])
    assert 0 < len(texts) <= 6 and {p for p, _ in texts} <= train_prompts and all(r.strip() for _, r in texts)
    assert store.drifted[:12] in note and "r20250601-2359" in note
    assert production_policy_texts(storage, table, 6, seed=0)[0] == texts  # seeded
    assert production_policy_texts(storage, table, 0, seed=0)[0] == []     # policy_samples=0: none
    root, teacher_id = teacher_store
    teacher = ArtifactStore(storage).put_dir(ArtifactStore(Storage(str(root))).get(teacher_id), kind="reward_model",
                                             manifest={}).id
    out = distill_release(storage, teacher, None, table, DistillSettings(epochs=1, bench_items=4, max_train_pairs=32),
                          dataset_id="d1", extra_texts=texts)
    assert out.report["training"]["n_extra_texts"] == len(texts)
