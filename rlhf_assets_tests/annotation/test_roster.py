"""`rlhf annotate roster`: a token is printed once and stored only as its hash; a new token replaces the old; a
deactivated or expired annotator cannot sign in; bad names and settings are refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from rlhf_assets.annotation.roster import Roster, SignInError, active_annotators, token_hash
from rlhf_assets.annotation.server import main
from rlhf_assets.annotation.settings import AppSettings
from rlhf_assets.storage import Storage


def test_roster_commands(tmp_path, capsys):
    root = str(tmp_path / "rlhf")
    roster = Roster(Storage(root))
    assert active_annotators(Storage(root)) is None  # no roster yet
    assert main(["roster", "--root", root, "add", "alice", "--expires-days", "3"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    text = (tmp_path / "rlhf" / "annotation" / "roster.json").read_text()
    assert token not in text and token_hash(token) in text  # only the hash is kept
    entry = roster.verify("alice", token)
    expires = datetime.fromisoformat(entry.expires_at)
    assert timedelta(days=2.9) < expires - datetime.now(UTC) <= timedelta(days=3)

    assert main(["roster", "list", "--root", root]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["annotator_id"] for a in listed] == ["alice"] and "token_sha256" not in listed[0]

    assert main(["roster", "--root", root, "add", "alice"]) == 0  # a new token: the old one stops working
    new_token = capsys.readouterr().out.strip()
    with pytest.raises(SignInError, match="wrong token"):
        roster.verify("alice", token)
    assert roster.verify("alice", new_token).annotator_id == "alice"
    with pytest.raises(SignInError, match="expired"):
        roster.verify("alice", new_token, now=datetime.now(UTC) + timedelta(days=31))

    assert main(["roster", "--root", root, "deactivate", "alice"]) == 0
    with pytest.raises(SignInError, match="deactivated") as refused:
        roster.verify("alice", new_token)
    assert refused.value.status == 403
    assert active_annotators(Storage(root)) == []
    assert main(["roster", "--root", root, "activate", "alice"]) == 0
    assert active_annotators(Storage(root)) == ["alice"]

    capsys.readouterr()
    assert main(["roster", "--root", root, "add", "bad name!"]) == 2
    assert "annotator id 'bad name!'" in capsys.readouterr().err
    assert main(["roster", "--root", root, "deactivate", "nobody"]) == 2
    assert "no annotator 'nobody'" in capsys.readouterr().err


def test_bad_settings_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="day must be YYYY-MM-DD"):
        AppSettings(day="05/12/2026")
    assert main(["--root", str(tmp_path), "--day", "tomorrow"]) == 2
    assert "day must be YYYY-MM-DD" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "--guidelines-version", "v9"]) == 2
    assert "guidelines version 'v9'" in capsys.readouterr().err
