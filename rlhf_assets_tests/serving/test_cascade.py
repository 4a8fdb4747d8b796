"""The student → teacher cascade of `rlhf serve --cascade-student`: on a real server, compared items whose
student-calibrated preference lies inside the band are decided by the teacher (the production model), the others by
the student alone — the teacher never sees them — and the metrics count both."""

import json
import re
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import RewardScorer, save_reward_model
from rlhf_assets.reward.calibration import calibrator_from_dict
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.distill import DistillSettings, build_student
from rlhf_assets.reward.distill_release import ARTIFACT_KIND, CALIBRATION_FILE
from rlhf_assets.reward.network import build_reward_net
from rlhf_assets_tests.serving.service_support import make_store, start_server
from rlhf_assets_tests.support import metric

STUDENT_PLATT = {"method": "platt", "slope": 40.0, "intercept": 0.0}  # spreads a random student's tiny margins
ITEMS = [{"prompt": f"question {i}?", "response_a": f"answer number {i} " * (1 + i % 3),
          "response_b": ["no", "I cannot help", "sure, here it is", "maybe later"][i % 4]} for i in range(8)]


@pytest.fixture(scope="module")
def cascade_store(tmp_path_factory):
    """The serving store (production: rm[0] with its Platt calibration) plus a distilled-kind student with its
    own calibrator; the student's calibrated P of ITEMS, computed here the way the service computes it."""
    store = make_store(tmp_path_factory.mktemp("cascade"))
    store.promote("r20250601-2359", store.rm[0], store.calibration)
    cfg = RMConfig(preset="tiny", max_length=64, seed=0)
    teacher, tok = build_reward_net(cfg)
    student = build_student(teacher, DistillSettings(student_layers=1, student_hidden=32, seed=5)).eval()
    with tempfile.TemporaryDirectory() as d:
        save_reward_model(student, tok, cfg, d)
        (Path(d) / CALIBRATION_FILE).write_text(json.dumps({"calibrator": STUDENT_PLATT}))
        student_id = ArtifactStore(store.storage).put_dir(d, kind=ARTIFACT_KIND, manifest={}).id
    scorer = RewardScorer(student, tok, 64)
    prompts = [i["prompt"] for i in ITEMS]
    margins = scorer.score(prompts, [i["response_a"] for i in ITEMS]) - scorer.score(prompts, [i["response_b"]
                                                                                              for i in ITEMS])
    p_student = calibrator_from_dict(STUDENT_PLATT).predict(margins)
    return store, student_id, np.asarray(p_student)


def test_items_inside_the_band_go_to_the_teacher_and_only_they(cascade_store):
    store, student_id, p_student = cascade_store
    distance = np.sort(np.abs(p_student - 0.5))
    assert distance[2] < distance[-1], "the student's preferences do not spread; change STUDENT_PLATT"
    band = float((distance[2] + distance[3]) / 2)  # three items inside, five outside
    inside = np.abs(p_student - 0.5) <= band
    server = start_server(store, "--cascade-student", student_id[:12], "--cascade-band", f"{band:.12f}")
    try:
        with server.client() as c:
            out = c.post("/v1/compare", json={"items": ITEMS}).json()["items"]
            metrics_text = c.get("/metrics").text
            # what the teacher alone says (a pinned version never cascades)
            teacher = c.post(f"/v1/models/{store.rm[0]}/compare", json={"items": ITEMS}).json()["items"]
    finally:
        server.terminate()
    decided = np.array([o["decided_by"] == "teacher" for o in out])
    assert decided.tolist() == inside.tolist()
    for o, t, p_s, sent in zip(out, teacher, p_student, inside):
        if sent:
            assert o["artifact_id"] == store.rm[0] and o["p_a"] == pytest.approx(t["p_a"], abs=1e-9)
            assert o["calibration_id"] == store.calibration and o["alias"] == "production"
        else:
            assert o["artifact_id"] == student_id and o["alias"] == "cascade-student"
            assert o["p_a"] == pytest.approx(p_s, abs=1e-6) and o["calibrated"] is True
    assert metric(metrics_text, "rlhf_rm_cascade_items_total", decided_by="teacher") == inside.sum()
    assert metric(metrics_text, "rlhf_rm_cascade_items_total", decided_by="student") == (~inside).sum()
    # the teacher's forward passes held exactly the escalated items' two texts each: the others never reached it
    assert metric(metrics_text, "rlhf_rm_batch_size_sum", model=store.rm[0]) == 2 * inside.sum()
    assert metric(metrics_text, "rlhf_rm_batch_size_sum", model=student_id) == 2 * len(ITEMS)


def test_a_cascade_student_that_is_not_a_reward_model_keeps_the_service_unready(cascade_store):
    store, _, _ = cascade_store
    server = start_server(store, "--cascade-student", store.calibration, wait_ready=False)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            try:
                r = httpx.get(server.url + "/readyz", timeout=2)
                body = r.text
                if "cascade_student" in body:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert r.status_code == 503 and re.search(r"cascade_student .* is a 'calibration' artifact", body), body
    finally:
        server.terminate()
