"""`rlhf ope --simulate` with and without --judge-model (in-process, the tiny policies of ``tiny_setup``)."""

import json
import shutil

from typer.testing import CliRunner

from rlhf_assets.cli import app
from rlhf_assets_tests.support import learnable_pairs, write_jsonl


def test_ope_prints_the_proxy_and_the_judge_uplift(tiny_setup, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in learnable_pairs(6, 3000)])
    judge_dir = tmp_path / "judge"  # another artifact directory (the same weights: the plumbing is under test)
    shutil.copytree(tiny_setup["rm_dir"], judge_dir)
    base = ["ope", "--simulate", "--target", tiny_setup["sft_dir"], "--behavior", tiny_setup["sft_dir"],
            "--reward-model", tiny_setup["rm_id"], "--prompts", str(prompts), "--max-prompt-tokens", "24",
            "--max-new-tokens", "8", "--root", tiny_setup["store"]]
    runner = CliRunner()

    out = runner.invoke(app, base + ["--judge-model", str(judge_dir), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["judge"]["measured"] and report["judge"]["reward_model_id"] == "judge"
    assert report["proxy"]["reward_model_id"] == tiny_setup["rm_id"]
    # no calibration and a judge with the proxy's weights: the two columns must agree (same log, same weights)
    for key in ("target", "behavior", "uplift"):
        assert abs(report["judge"][key]["value"] - report["proxy"][key]["value"]) < 1e-5, key
    assert report["ess"] == report["judge"]["target"]["ess"]
    assert "log_weights" not in report

    md = runner.invoke(app, base + ["--judge-model", str(judge_dir)])
    assert md.exit_code == 0 and "**judge uplift:" in md.stdout and "proxy uplift:" in md.stdout

    unjudged = runner.invoke(app, base)
    assert unjudged.exit_code == 0 and "judge uplift: not measured" in unjudged.stdout

    same = runner.invoke(app, base + ["--judge-model", tiny_setup["rm_id"]])
    assert same.exit_code == 2 and "the judge is the proxy reward model itself" in same.output
