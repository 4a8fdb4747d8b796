"""The reward-model HTTP service (``rlhf serve``): versioned, canary-routed, micro-batched, cached, hot-reloading,
authenticated and observable. FastAPI on uvicorn; no Dagster here."""
