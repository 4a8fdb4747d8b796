"""The servers ours is measured against, each serving the same stored reward model with the same tokenisation:

    python -m bench.serving_peers naive    --model DIR --port P   # FastAPI, one forward per request (sync handler)
    python -m bench.serving_peers litserve --model DIR --port P   # LitServe, max_batch_size / batch_timeout
    python -m bench.serving_peers ray      --model DIR --port P   # Ray Serve, @serve.batch

Each takes ``POST /score {"prompt", "response"}`` → ``{"score"}`` and answers ``GET /healthz``. The peers batch with
the same window and size as ours (``--max-batch-size``, ``--max-wait-ms``); each batch's size is appended to
``--batch-log`` so the benchmark can report their mean batch size too. The peers are installed by ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _scorer(model_dir: str, threads: int):
    import torch

    from rlhf_assets.reward.artifact import load_reward_model

    if threads:
        torch.set_num_threads(threads)
    return load_reward_model(model_dir)


def _record(path: str | None, size: int) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(f"{size}\n")


def naive(args: argparse.Namespace) -> None:
    """The service every team writes first: a sync endpoint, one forward per request."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    scorer = _scorer(args.model, args.threads)
    app = FastAPI()

    @app.post("/score")
    def score(item: dict) -> dict:
        with torch.inference_mode():
            value = float(scorer.score([item["prompt"]], [item["response"]])[0])
        _record(args.batch_log, 1)
        return {"score": value}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def _lit_api_class():
    import litserve as ls

    class RewardAPI(ls.LitAPI):
        """LitServe runs this in worker processes it spawns, so it is a module-level class configured by fields."""

        def __init__(self, model: str, threads: int, batch_log: str | None, **kwargs):
            super().__init__(**kwargs)
            self.model, self.threads, self.batch_log = model, threads, batch_log

        def setup(self, device):
            self.scorer = _scorer(self.model, self.threads)

        def decode_request(self, request):
            return request["prompt"], request["response"]

        def predict(self, batch):
            _record(self.batch_log, len(batch))
            return list(self.scorer.score([b[0] for b in batch], [b[1] for b in batch], batch_size=len(batch)))

        def encode_response(self, output):
            return {"score": float(output)}

    RewardAPI.__qualname__ = "RewardAPI"  # pickled by reference to this module's global of that name
    return RewardAPI


try:  # defined at import time (spawned workers unpickle it by this module's name) when LitServe is installed
    RewardAPI = _lit_api_class()
except ImportError:
    RewardAPI = None


def litserve(args: argparse.Namespace) -> None:
    import litserve as ls

    api = RewardAPI(args.model, args.threads, args.batch_log, max_batch_size=args.max_batch_size,
                    batch_timeout=args.max_wait_ms / 1000.0, api_path="/score")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, healthcheck_path="/healthz")
    server.run(port=args.port, log_level="warning", generate_client_file=False)


def ray(args: argparse.Namespace) -> None:
    import ray as ray_
    from ray import serve
    from starlette.requests import Request

    ray_.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1024)
    class Reward:
        def __init__(self):
            self.scorer = _scorer(args.model, args.threads)

        @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.max_wait_ms / 1000.0)
        async def score(self, items: list[tuple[str, str]]) -> list[float]:
            _record(args.batch_log, len(items))
            return [float(x) for x in self.scorer.score([i[0] for i in items], [i[1] for i in items],
                                                         batch_size=len(items))]

        async def __call__(self, request: Request) -> dict:
            if request.url.path.endswith("/healthz"):
                return {"ok": True}
            body = await request.json()
            return {"score": await self.score((body["prompt"], body["response"]))}

    serve.run(Reward.bind(), route_prefix="/", blocking=False)
    print("ray serve ready", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.serving_peers")
    p.add_argument("server", choices=["naive", "litserve", "ray"])
    p.add_argument("--model", required=True, help="Reward-model artifact directory.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=4.0)
    p.add_argument("--batch-log")
    args = p.parse_args(argv)
    {"naive": naive, "litserve": litserve, "ray": ray}[args.server](args)


if __name__ == "__main__":
    sys.exit(main())
