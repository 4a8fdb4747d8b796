"""Who may annotate: the roster, ``<root>/annotation/roster.json``.

One entry per annotator: the sha256 of their token (the token itself is printed once, by ``rlhf annotate roster
add``, and stored nowhere), when it expires and whether the annotator is active. Tokens are 32 random bytes
(``secrets.token_urlsafe``), so a plain sha256 is enough: there is nothing to guess that a slow hash would protect.
Adding an annotator who is already on the roster issues them a new token (the old one stops working).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from rlhf_assets.storage import Storage

ROSTER_PATH = ("annotation", "roster.json")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class SignInError(Exception):
    """Why a sign-in was refused; ``status`` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass(frozen=True)
class Annotator:
    annotator_id: str
    token_sha256: str
    expires_at: str  # ISO-8601 UTC
    active: bool = True
    created_at: str = ""

    def expired(self, now: datetime) -> bool:
        return now >= datetime.fromisoformat(self.expires_at)

    def public(self) -> dict:
        """Everything but the token's hash."""
        return {k: v for k, v in asdict(self).items() if k != "token_sha256"}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Roster:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.path = storage.path(*ROSTER_PATH)

    def load(self) -> dict[str, Annotator]:
        if not self.storage.exists(self.path):
            return {}
        doc = self.storage.read_json(self.path)
        return {a["annotator_id"]: Annotator(**a) for a in doc.get("annotators", [])}

    def _save(self, annotators: dict[str, Annotator]) -> None:
        self.storage.write_json(self.path, {"annotators": [asdict(a) for _, a in sorted(annotators.items())]})

    def add(self, annotator_id: str, expires_days: float, now: datetime | None = None) -> tuple[Annotator, str]:
        """Put ``annotator_id`` on the roster (active) with a new token: (the entry, the token — shown once)."""
        if not NAME.match(annotator_id):
            raise ValueError(f"annotator id {annotator_id!r} must be 1-64 letters, digits, '_', '.', '@' or '-', "
                             "starting with a letter or digit")
        if not expires_days > 0:
            raise ValueError(f"expiry must be a positive number of days, got {expires_days}")
        now = now or datetime.now(UTC)
        token = secrets.token_urlsafe(32)
        entry = Annotator(annotator_id, token_hash(token), (now + timedelta(days=expires_days)).isoformat(),
                          True, now.isoformat())
        annotators = self.load()
        annotators[annotator_id] = entry
        self._save(annotators)
        return entry, token

    def set_active(self, annotator_id: str, active: bool) -> Annotator:
        annotators = self.load()
        if annotator_id not in annotators:
            raise ValueError(f"no annotator {annotator_id!r} on the roster {self.path}")
        annotators[annotator_id] = entry = Annotator(**(asdict(annotators[annotator_id]) | {"active": active}))
        self._save(annotators)
        return entry

    def verify(self, annotator_id: str, token: str, now: datetime | None = None) -> Annotator:
        """The annotator the token signs in, or SignInError saying what is wrong (401/403)."""
        entry = self.load().get(annotator_id)
        if entry is None:
            raise SignInError(401, f"unknown annotator {annotator_id!r}: not on the roster (an admin adds you with "
                                   "`rlhf annotate roster add NAME`)", "annotator")
        if not hmac.compare_digest(token_hash(token), entry.token_sha256):
            raise SignInError(401, f"wrong token for annotator {annotator_id!r}", "token")
        if entry.expired(now or datetime.now(UTC)):
            raise SignInError(401, f"the token of {annotator_id!r} expired at {entry.expires_at}; ask an admin for "
                                   "a new one (`rlhf annotate roster add NAME`)", "token")
        if not entry.active:
            raise SignInError(403, f"annotator {annotator_id!r} is deactivated on the roster", "annotator")
        return entry


def active_annotators(storage: Storage, now: datetime | None = None) -> list[str] | None:
    """Ids of the active annotators whose token has not expired, sorted; None when there is no roster."""
    roster = Roster(storage)
    if not storage.exists(roster.path):
        return None
    now = now or datetime.now(UTC)
    return sorted(a.annotator_id for a in roster.load().values() if a.active and not a.expired(now))


def queue_annotators(storage: Storage, configured: Sequence[str]) -> tuple[list[str], str]:
    """Whom a queue assigns work to: the roster's active annotators when there is a roster, else the ``configured``
    ids; and where they came from ("roster" | "config"). Both queues (pairs and audits) pick them this way."""
    roster = active_annotators(storage)
    return (roster, "roster") if roster is not None else (list(configured), "config")
