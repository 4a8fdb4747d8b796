"""A store with tiny reward models and a calibration, and a real `rlhf serve` process on a free loopback port."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.storage import Storage
from rlhf_assets_tests.support import LoopbackServer, start_on_loopback, subprocess_env

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLATT = {"method": "platt", "slope": 2.5, "intercept": -0.3}


@dataclass
class ServeStore:
    root: Path | str                  # a directory, or an s3:// uri (then storage_options name the endpoint)
    rm: list[str]                     # two tiny reward models (seeds 0 and 1)
    calibration: str                  # a Platt calibration of rm[0]
    storage_options: dict | None = None

    @property
    def storage(self) -> Storage:
        return Storage(str(self.root), self.storage_options)

    def promote(self, release: str, rm: str, calibration: str | None = None, *, alias: str = "production",
                share: float | None = None, action: str = "promote") -> None:
        artifacts = {"reward_model": rm, **({"calibration": calibration} if calibration else {})}
        Registry(self.storage).set_alias(alias, release, artifacts, action=action, reason="test", actor="test",
                                         share=share)


def make_store(root: Path | str, max_length: int = 64, storage_options: dict | None = None) -> ServeStore:
    from rlhf_assets.reward.artifact import save_reward_model
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.network import build_reward_net

    store = ArtifactStore(Storage(str(root), storage_options))
    ids = []
    for seed in (0, 1):
        cfg = RMConfig(preset="tiny", max_length=max_length, seed=seed)
        net, tok = build_reward_net(cfg)
        with tempfile.TemporaryDirectory() as d:
            save_reward_model(net, tok, cfg, d)
            ids.append(store.put_dir(d, kind="reward_model", manifest={"seed": seed}).id)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "calibration.json").write_text(json.dumps({"calibrator": PLATT}))
        cal = store.put_dir(d, kind="calibration", manifest={"parent_ids": [ids[0]]}).id
    return ServeStore(root, ids, cal, storage_options)


@dataclass
class Server(LoopbackServer):
    started_s: float
    stderr: list[str] = field(default_factory=list)

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=30, **kw)


def serve_env(token: str | None, **extra: str) -> dict[str, str]:
    """The serving processes' environment: RLHF_SERVE_TOKEN is the token (or unset when None)."""
    environment = subprocess_env(**extra)
    environment.pop("RLHF_SERVE_TOKEN", None)
    if token:
        environment["RLHF_SERVE_TOKEN"] = token
    return environment


def start_server(store: ServeStore, *args: str, token: str | None = TOKEN, wait_ready: bool = True,
                 env: dict | None = None) -> Server:
    """`python -m rlhf_assets.serving.server --port 0 …` against the store; waits for /readyz."""
    environment = serve_env(token, **{"RLHF_STORAGE_ROOT": str(store.root),
                                      "RLHF_ONNX_CACHE": str(Path(store.root) / "onnx"), **(env or {})})
    t0 = time.monotonic()
    process, url = start_on_loopback("rlhf_assets.serving.server", "--reload-interval-s", "0.5",
                                     "--log-flush-s", "0.5", *args, env=environment,
                                     ready_path="/readyz" if wait_ready else None, what="the server")
    server = Server(process, url, time.monotonic() - t0)
    os.set_blocking(process.stderr.fileno(), False)
    return server
