"""The two images install the project the way `make install` does (the Makefile is the one source of the steps and
pins): torch first and pinned — the CPU build for the code location, a CUDA build for training — then the project,
then the MiniLM backbone with --no-deps. And the images they build are the ones the Helm values and manifests run."""

import re
import tomllib

import pytest
import yaml

from rlhf_assets_tests.k8s.k8s_support import K8S, REPO, one

DOCKERFILES = {"Dockerfile": "/whl/cpu", "Dockerfile.training": "/whl/cu"}


def makefile_install_steps() -> list[str]:
    """The pip installs of the Makefile's install recipe ($(STAMP)), in order, as `torch==…`, `-e .`, `--no-deps X`."""
    recipe = re.search(r"^\$\(STAMP\):.*?\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    return [_step(line) for line in recipe.splitlines() if "pip install" in line]


def dockerfile_install_steps(text: str) -> list[str]:
    runs = re.findall(r"^RUN (.*)", text.replace("\\\n", " "), re.MULTILINE)  # continuation lines joined
    return [_step(part) for run in runs for part in run.split("&&") if "pip install" in part]


def _step(command: str) -> str:
    if m := re.search(r"(torch==\S+)", command):
        return m.group(1)
    if m := re.search(r"--no-deps (\S+)", command):
        return f"--no-deps {m.group(1)}"
    if re.search(r"-e \"?\.(\[\w+\])?\"?", command):
        return "-e ."
    raise AssertionError(f"an install step the test does not know: {command}")


def test_the_makefile_steps_are_what_the_test_reads():
    steps = makefile_install_steps()
    assert steps[0].startswith("torch==") and steps[1] == "-e ." and steps[2].startswith("--no-deps ")


@pytest.mark.parametrize(("name", "index"), DOCKERFILES.items())
def test_image_installs_like_make(name, index):
    text = (K8S / name).read_text()
    assert dockerfile_install_steps(text) == makefile_install_steps()
    (torch_index,) = re.findall(r"ARG TORCH_INDEX=(\S+)", text)
    assert index in torch_index and re.search(r"--index-url \"?\$TORCH_INDEX", text)
    python = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.MULTILINE).groups()
    required = re.match(r">=(\d+)\.(\d+)", tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                        ["requires-python"]).groups()
    assert tuple(map(int, python)) >= tuple(map(int, required))
    copied = {p for line in re.findall(r"^COPY (.*)", text, re.MULTILINE) for p in line.split()[:-1]}
    assert {"pyproject.toml", "README.md", "rlhf_assets"} <= copied  # what `pip install -e .` reads
    assert "GX_ANALYTICS_ENABLED=false" in text


def test_a_drifted_pin_is_caught():
    text = (K8S / "Dockerfile").read_text().replace("torch==2.13.0", "torch==2.12.0")
    assert dockerfile_install_steps(text) != makefile_install_steps()


def _built_images() -> dict[str, str]:
    """{Dockerfile: the repository its documented build command tags}."""
    return {name: re.search(r"docker build -f k8s/" + re.escape(name) + r" -t (\S+?):\S+ \.",
                            (K8S / name).read_text()).group(1) for name in DOCKERFILES}


def test_the_values_and_manifests_run_the_images_the_dockerfiles_build():
    built = _built_images()
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["image"]["repository"] == built["Dockerfile"]
    (serve,) = one("reward-model-service.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    assert serve["image"].rsplit(":", 1)[0] == built["Dockerfile"]
    training = yaml.safe_load(one("training-config.yaml", "ConfigMap")["data"]["training.yaml"])
    assert training["image"].rsplit(":", 1)[0] == built["Dockerfile.training"]
    (multinode,) = one("training-multinode.yaml", "Job")["spec"]["template"]["spec"]["containers"]
    assert multinode["image"].rsplit(":", 1)[0] == built["Dockerfile.training"]
