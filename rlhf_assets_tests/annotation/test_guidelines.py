"""Versioned guidelines: the bundled v1, the highest version of a folder by number (v10 after v9), a pinned version,
Markdown rendered with raw HTML escaped."""

from __future__ import annotations

import pytest

from rlhf_assets.annotation.app import load_guidelines


def test_bundled_guidelines():
    guidelines = load_guidelines(None, None)
    assert guidelines.version == "v1"
    assert "<h1>Comparing two responses" in guidelines.html and "<strong>1</strong>" in guidelines.html


def test_a_folder_of_versions(tmp_path):
    for version in ("v1", "v9", "v10"):
        (tmp_path / f"{version}.md").write_text(f"# Guidelines {version}\n\n<script>alert(1)</script>\n")
    (tmp_path / "draft.md").write_text("not a version")
    latest = load_guidelines(str(tmp_path), None)
    assert latest.version == "v10" and "<h1>Guidelines v10</h1>" in latest.html
    assert "<script>" not in latest.html and "&lt;script&gt;" in latest.html
    assert load_guidelines(str(tmp_path), "v9").version == "v9"
    with pytest.raises(ValueError, match="guidelines version 'v2' not in"):
        load_guidelines(str(tmp_path), "v2")
    with pytest.raises(ValueError, match="no guidelines"):
        load_guidelines(str(tmp_path / "missing"), None)
