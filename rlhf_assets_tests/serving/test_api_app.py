"""api_app (serving/app.py), the frame of the annotation app and the model services: the service is started and
stopped with the app, and errors keep one shape."""

from fastapi.testclient import TestClient

from rlhf_assets.serving.app import api_app
from rlhf_assets.serving.requests import ApiError


class _Service:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


def test_the_service_runs_with_the_app_and_errors_keep_their_shape():
    service = _Service()
    app = api_app("test", service, lambda err: f"internal error: {type(err).__name__}: {err}; nothing lost",
                  openapi_url=None)

    @app.get("/refused")
    async def refused() -> dict:
        raise ApiError(422, "prompt is empty", "prompt")

    @app.get("/broken")
    async def broken() -> dict:
        raise RuntimeError("disk on fire")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert service.calls == ["start"] and app.state.service is service
        bad = client.get("/refused")
        assert bad.status_code == 422 and bad.json() == {"error": "prompt is empty", "field": "prompt"}
        crash = client.get("/broken")
        assert crash.status_code == 500
        assert crash.json() == {"error": "internal error: RuntimeError: disk on fire; nothing lost", "field": None}
        assert client.get("/openapi.json").status_code == 404  # FastAPI's own keywords pass through
    assert service.calls == ["start", "stop"]
