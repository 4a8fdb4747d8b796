"""A Storage that records every file it reads, so a test can assert how much work an incremental read does."""

from __future__ import annotations

from rlhf_assets.storage import Storage


class CountingStorage(Storage):
    """Storage whose read_bytes / read_parquet calls are recorded (path strings, in order) in ``reads``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def read_bytes(self, path):
        self.reads.append(str(path))
        return super().read_bytes(path)

    def read_parquet(self, path):
        self.reads.append(str(path))
        return super().read_parquet(path)

    def reads_under(self, *parts: str) -> list[str]:
        """The files read under ``<root>/<parts>`` (clear ``reads`` to start counting afresh)."""
        prefix = str(self.path(*parts)) + "/"
        return [r for r in self.reads if r.startswith(prefix)]
