"""The one JSONL reader (rlhf_assets/jsonl_rows.py) the policy entry point, `rlhf ope` and the QC pool use."""

import pytest

from rlhf_assets.jsonl_rows import numbered_jsonl, read_jsonl


def test_blank_lines_are_skipped_and_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a"}\n\n  \n{"prompt": "b", "n": 1}\n')
    assert [(n, r["prompt"]) for n, r in numbered_jsonl(path, ("prompt",))] == [(1, "a"), (4, "b")]
    assert read_jsonl(path, ("prompt",)) == [{"prompt": "a"}, {"prompt": "b", "n": 1}]


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "a"}\n\n{"prompt": \n', r"rows.jsonl:3: not JSON"),
    ('{"prompt": "a"}\n["prompt"]\n', r"rows.jsonl:2: expected an object"),
    ('{"prompt": 3}\n', r"rows.jsonl:1: field 'prompt' must be a string"),
    ('{"response": "a"}\n', r"rows.jsonl:1: field 'prompt' must be a string"),
    ("\n\n", r"rows.jsonl holds no rows"),
])
def test_a_bad_file_is_refused_naming_its_line(tmp_path, text, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path, ("prompt",))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl", ("prompt",))
