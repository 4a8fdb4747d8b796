"""Alerts: always to the log; to a webhook too when one is configured (a POST of JSON; a failure to deliver is
logged, never raised: an alert must not break the sensor that sends it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

LOG = logging.getLogger("rlhf_assets.alerts")


class Notifier:
    def __init__(self, webhook_url: str | None = None, log: Callable[[str], None] | None = None,
                 timeout_s: float = 5.0):
        self.webhook_url, self.timeout_s = webhook_url, timeout_s
        self.log = log or LOG.warning
        self.sent: list[dict[str, Any]] = []  # what was sent in this process (the demo prints it)

    def alert(self, source: str, title: str, evidence: dict[str, Any] | None = None) -> None:
        message = {"time": datetime.now(UTC).isoformat(), "source": source, "title": title,
                   "evidence": evidence or {}}
        self.sent.append(message)
        self.log(f"ALERT [{source}] {title} {json.dumps(evidence or {}, default=str)[:2000]}")
        if not self.webhook_url:
            return
        try:
            import httpx

            httpx.post(self.webhook_url, json=message, timeout=self.timeout_s).raise_for_status()
        except Exception as exc:  # noqa: BLE001 - delivery is best effort; the log has the alert
            self.log(f"alert webhook {self.webhook_url} failed: {exc!r}")
