"""Bundled real preference data: loaders, and the reproducible derivation of the SQuALITY pairwise file.

Two small public data sets ship inside the package (``rlhf_assets/sample_data/``, see its README for
provenance, licenses and checksums):

* ``hh-rlhf-harmless/test.jsonl.gz`` -- Anthropic HH-RLHF harmless-base test split, copied unchanged
  (2,312 chosen/rejected transcripts; red-teaming dialogue, contains offensive text).
* ``squality/pairwise.jsonl.gz`` -- SQuALITY human evaluation turned into 900 pairwise comparison records of
  the project schema, with the real worker ids; built by :func:`build_squality_pairs`.

Nothing here imports Dagster.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import random
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from pathlib import Path

from rlhf_assets.preference.schema import FIELD_NAMES

log = logging.getLogger(__name__)

ASSISTANT_MARKER = "\n\nAssistant:"

HH_FILE = Path("hh-rlhf-harmless") / "test.jsonl.gz"
SQUALITY_FILE = Path("squality") / "pairwise.jsonl.gz"

SQUALITY_BATCH_ID = "squality-human-eval"
SQUALITY_SYSTEMS = ("bart", "bart-dpr", "human")
SQUALITY_STORY_CHARS = 1500
SQUALITY_SEED = 0


def sample_data_dir() -> Path:
    """The folder holding the bundled sample data (inside the installed ``rlhf_assets`` package)."""
    try:
        path = Path(str(resources.files("rlhf_assets").joinpath("sample_data")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - exotic loaders
        path = Path(__file__).resolve().parent.parent / "sample_data"
    if not path.is_dir():  # pragma: no cover - e.g. a zipped install
        path = Path(__file__).resolve().parent.parent / "sample_data"
    return path


# --------------------------------------------------------------------------------------------------------------
# HH-RLHF harmless-base
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HHLoadStats:
    """How the HH transcripts were split.

    ``n_common_prefix`` rows could not be split at their last ``"\\n\\nAssistant:"`` because chosen and
    rejected do not share that prompt (the source has a few transcripts whose final turns differ in more than
    the last assistant message); they were split at the longest common prefix instead, and are kept.
    """

    n_rows: int
    n_common_prefix: int
    common_prefix_rows: tuple[int, ...]  # 0-based line numbers in the source file


def _strip_response(text: str) -> str:
    return text.lstrip()


def split_hh_transcripts(chosen: str, rejected: str) -> tuple[dict[str, str], bool]:
    """Split one HH row into ``{prompt, chosen, rejected}``; the bool is True when the fallback split was used.

    Normal case: both transcripts end with a final ``"\\n\\nAssistant:"`` turn and share everything up to and
    including it; the prompt is that shared part and the responses are the final turns without leading
    whitespace.

    Fallback: the prompt is the longest common prefix of the two transcripts, cut back to just after the last
    ``"\\n\\nAssistant:"`` inside it (or the whole common prefix when it holds none).
    """
    ic = chosen.rfind(ASSISTANT_MARKER)
    ir = rejected.rfind(ASSISTANT_MARKER)
    if ic >= 0 and ir >= 0:
        cut = ic + len(ASSISTANT_MARKER)
        if cut == ir + len(ASSISTANT_MARKER) and chosen[:cut] == rejected[:cut]:
            return (
                {
                    "prompt": chosen[:cut],
                    "chosen": _strip_response(chosen[cut:]),
                    "rejected": _strip_response(rejected[cut:]),
                },
                False,
            )
    common = os.path.commonprefix([chosen, rejected])
    i = common.rfind(ASSISTANT_MARKER)
    cut = i + len(ASSISTANT_MARKER) if i >= 0 else len(common)
    return (
        {
            "prompt": chosen[:cut],
            "chosen": _strip_response(chosen[cut:]),
            "rejected": _strip_response(rejected[cut:]),
        },
        True,
    )


def _iter_jsonl_gz(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_hh_pairs_with_stats(limit: int | None = None) -> tuple[list[dict[str, str]], HHLoadStats]:
    """Like :func:`load_hh_pairs`, also returning how many rows needed the fallback split."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    pairs: list[dict[str, str]] = []
    fallback: list[int] = []
    for lineno, row in enumerate(_iter_jsonl_gz(sample_data_dir() / HH_FILE)):
        if limit is not None and len(pairs) >= limit:
            break
        pair, used_fallback = split_hh_transcripts(row["chosen"], row["rejected"])
        if used_fallback:
            fallback.append(lineno)
        pairs.append(pair)
    return pairs, HHLoadStats(len(pairs), len(fallback), tuple(fallback))


def load_hh_pairs(limit: int | None = None) -> list[dict[str, str]]:
    """HH-RLHF harmless-base test pairs as ``{prompt, chosen, rejected}`` dicts, in file order.

    ``prompt`` keeps the transcript up to and including the last ``"\\n\\nAssistant:"``; ``chosen`` and
    ``rejected`` are the final assistant turns with leading whitespace stripped. No row is dropped: rows
    whose transcripts do not share that prompt (5 of 2,312) are split at their longest common prefix and
    counted; the count is logged at WARNING level (use :func:`load_hh_pairs_with_stats` to get it).
    """
    pairs, stats = load_hh_pairs_with_stats(limit)
    if stats.n_common_prefix:
        log.warning(
            "HH-RLHF: %d of %d rows split at the longest common prefix (chosen/rejected do not share the "
            "prompt up to the last Assistant turn); lines %s",
            stats.n_common_prefix,
            stats.n_rows,
            list(stats.common_prefix_rows),
        )
    return pairs


# --------------------------------------------------------------------------------------------------------------
# SQuALITY human evaluation -> pairwise comparisons
# --------------------------------------------------------------------------------------------------------------


def load_squality_comparisons() -> list[dict]:
    """The 900 bundled SQuALITY pairwise comparison records (project schema, without ``created_at``)."""
    return list(_iter_jsonl_gz(sample_data_dir() / SQUALITY_FILE))


def squality_prompt(document: str, passage_id: str, question_text: str) -> str:
    """Story truncated to its first 1,500 characters (after stripping surrounding whitespace), a marker, and
    the question."""
    story = document.strip()
    if len(story) > SQUALITY_STORY_CHARS:
        excerpt = story[:SQUALITY_STORY_CHARS]
        marker = f"\n[story truncated; full text: Project Gutenberg passage {passage_id}]"
    else:
        excerpt, marker = story, ""
    return f"Story:\n{excerpt}{marker}\n\nQuestion: {question_text.strip()}"


def _squality_records(src_dir: Path, seed: int) -> list[dict]:
    src_dir = Path(src_dir)
    docs: dict[str, dict] = {}
    with open(src_dir / "test.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                docs[str(row["metadata"]["passage_id"])] = row

    rng = random.Random(seed)
    records: list[dict] = []
    with open(src_dir / "all-responses.jsonl", encoding="utf-8") as fh:
        evals = [json.loads(line) for line in fh if line.strip()]
    for ev in evals:  # file order
        pid = str(ev["passage-id"])
        doc = docs[pid]
        questions = {int(q["question_number"]) - 1: q["question_text"] for q in doc["questions"]}
        for qkey in sorted(ev["questions"], key=int):
            systems = ev["questions"][qkey]
            if set(systems) != set(SQUALITY_SYSTEMS):
                raise ValueError(f"passage {pid} question {qkey}: systems {sorted(systems)}")
            prompt = squality_prompt(doc["document"], pid, questions[int(qkey)])
            ranks: dict[str, dict[str, int]] = {}
            for system, entry in systems.items():
                for review in entry["reviews"]:
                    if review["system"] != system:
                        raise ValueError(f"passage {pid} q{qkey}: review of {review['system']} under {system}")
                    ranks.setdefault(str(review["worker_id"]), {})[system] = int(review["overall-rank"])
            for worker in sorted(ranks, key=lambda w: (len(w), w)):
                wr = ranks[worker]
                if set(wr) != set(SQUALITY_SYSTEMS):
                    raise ValueError(f"passage {pid} q{qkey}: worker {worker} ranked only {sorted(wr)}")
                for s1, s2 in combinations(SQUALITY_SYSTEMS, 2):
                    if wr[s1] == wr[s2]:
                        raise ValueError(f"passage {pid} q{qkey}: worker {worker} tied {s1} and {s2}")
                    sys_a, sys_b = (s2, s1) if rng.random() < 0.5 else (s1, s2)
                    rec = {
                        "comparison_id": f"squality-{pid}-{qkey}-{worker}-{sys_a}-{sys_b}",
                        "prompt": prompt,
                        "response_a": systems[sys_a]["response"],
                        "response_b": systems[sys_b]["response"],
                        "label": "a" if wr[sys_a] < wr[sys_b] else "b",
                        "annotator_id": worker,
                        "batch_id": SQUALITY_BATCH_ID,
                        "policy_a": sys_a,
                        "policy_b": sys_b,
                    }
                    if rec["response_a"] == rec["response_b"]:
                        raise ValueError(f"{rec['comparison_id']}: identical responses")
                    records.append({k: rec[k] for k in FIELD_NAMES if k in rec})
    return records


def squality_jsonl_bytes(records: list[dict]) -> bytes:
    """The uncompressed JSON-lines serialisation used for the bundled file."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def build_squality_pairs(src_dir: str | os.PathLike, out_path: str | os.PathLike, *, seed: int = SQUALITY_SEED) -> int:
    """Derive ``squality/pairwise.jsonl.gz`` from the SQuALITY human-eval files; returns the row count.

    ``src_dir`` holds ``all-responses.jsonl`` (data/human-eval/) and ``test.jsonl`` (data/v1-3/txt/) of
    https://github.com/nyu-mll/SQuALITY. For every (passage, question) and every worker who reviewed it, the
    worker's ``overall-rank`` (1 = best) over the three systems (bart, bart-dpr, human) becomes three
    pairwise records: ``label`` is the side the worker ranked better, ``annotator_id`` is the real worker id.
    The shown order of each pair is drawn from ``random.Random(seed)`` walking rows in a fixed order (passages
    in file order, question keys ascending, worker ids ascending, system pairs in the order
    (bart, bart-dpr), (bart, human), (bart-dpr, human)). ``created_at`` is left out. The output is gzip with
    mtime 0 and no file name, so it is byte-reproducible for a given zlib.
    """
    records = _squality_records(Path(src_dir), seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(squality_jsonl_bytes(records))
    out_path.write_bytes(buf.getvalue())
    return len(records)
