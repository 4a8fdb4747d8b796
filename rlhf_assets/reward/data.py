"""Preference pairs for reward-model training: reading, tokenisation with prompt-side truncation, batching.

Rows (JSONL, optionally gzipped): ``{"prompt", "chosen", "rejected"}`` plus optional ``"target"`` (probability
that chosen is preferred; default 1.0) and ``"weight"`` (default 1.0). A malformed row is an error naming its line.

Tokenisation keeps what differs: each sequence is prompt + response built by the tokenizer's own template
(``[CLS] prompt [SEP] response [SEP]`` for BERT-style tokenizers; decoders also get a final EOS when the tokenizer
has one). When it is longer than ``max_length`` the PROMPT is cut from the LEFT (the end of the conversation is
kept); if the response alone does not fit, the prompt is dropped and the response keeps its first tokens (special
tokens are still added). Every such pair is counted; no pair is ever dropped.

Batches put a pair's chosen and rejected sequences in ONE forward pass (``input_ids[:B]`` chosen,
``input_ids[B:]`` rejected), padded to the longest sequence in the batch. :class:`PairBatchSampler` makes a seeded
order of GLOBAL batches (length-grouped within mega-batches, then batch order shuffled) and gives each rank its
slice of every global batch, so N processes with per-device batch b see exactly the batches one process with batch
N·b sees. :class:`ResumableDataLoader` exposes ``state_dict``/``load_state_dict`` — Lightning (2.x) stores that in
the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and restores it before iterating, so a resumed run
continues with the next unseen batch.

No Lightning import here.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class PairsFormatError(ValueError):
    """A pairs file that cannot be used, with the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    target: float = 1.0
    weight: float = 1.0


def _number(value: Any, name: str, where: str, lo: float, hi: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PairsFormatError(f"{where}: {name!r} must be a finite number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise PairsFormatError(f"{where}: {name!r} must be in {rng}, got {value!r}")
    return float(value)


def parse_pair(row: Any, where: str = "row") -> PreferencePair:
    """Validate one decoded JSON row."""
    if not isinstance(row, dict):
        raise PairsFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        raise PairsFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    for k in ("prompt", "chosen", "rejected"):
        if not isinstance(row[k], str):
            raise PairsFormatError(f"{where}: {k!r} must be a string, got {type(row[k]).__name__}")
    # An empty response is data (the assistant said nothing), not an error: it is scored like any other.
    target = _number(row.get("target", 1.0), "target", where, 0.0, 1.0)
    weight = _number(row.get("weight", 1.0), "weight", where, 0.0, None)
    return PreferencePair(row["prompt"], row["chosen"], row["rejected"], target, weight)


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """All pairs of a JSONL (or .jsonl.gz) file; blank lines are skipped; any bad line raises with its number."""
    path = Path(path)
    if not path.is_file():
        raise PairsFormatError(f"pairs file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: list[PreferencePair] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PairsFormatError(f"{where}: not valid JSON ({exc.msg})") from exc
                pairs.append(parse_pair(row, where))
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise PairsFormatError(f"{path}: cannot read ({exc})") from exc
    if not pairs:
        raise PairsFormatError(f"{path}: no pairs")
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair | dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            row = p if isinstance(p, dict) else p.__dict__
            fh.write(json.dumps(row) + "\n")


def length_balanced(pairs: Sequence[PreferencePair], keep_weights: bool = True) -> tuple[list[PreferencePair], dict]:
    """The pairs reweighted so that those whose preferred response is longer (in words) and those whose preferred
    response is shorter carry equal total weight; pairs of equal length keep theirs. Length alone then predicts
    nothing in the training loss, so a reward model cannot lower it by learning "shorter wins" (or "longer wins")
    from a data set where that happens to hold: the length bias that style-edit probes (a truncated answer
    overtaking a good one) and length-hacking PPO exploit. ``keep_weights=False`` starts from unit weights.

    Returns the pairs and a summary: the weight of each group before, and the factor each was multiplied by.
    """
    def preferred_longer(p: PreferencePair) -> int:  # +1 longer, -1 shorter, 0 same length or no preference
        gap = len(p.chosen.split()) - len(p.rejected.split())
        return int(np.sign(gap)) * (1 if p.target > 0.5 else -1 if p.target < 0.5 else 0)

    base = [p.weight if keep_weights else 1.0 for p in pairs]
    side = [preferred_longer(p) for p in pairs]
    longer = sum(w for w, s in zip(base, side) if s > 0)
    shorter = sum(w for w, s in zip(base, side) if s < 0)
    factor = {1: 1.0, -1: 1.0, 0: 1.0}
    if longer > 0 and shorter > 0:  # one group empty: nothing to balance against
        factor[1], factor[-1] = (longer + shorter) / (2 * longer), (longer + shorter) / (2 * shorter)
    out = [dataclasses.replace(p, weight=w * factor[s]) for p, w, s in zip(pairs, base, side)]
    return out, {"weight_preferred_longer": longer, "weight_preferred_shorter": shorter,
                 "factor_preferred_longer": factor[1], "factor_preferred_shorter": factor[-1]}


# tokenisation ---------------------------------------------------------------------------------------------------


@dataclass
class EncodedSequence:
    input_ids: list[int]
    token_type_ids: list[int]
    truncation: str | None = None  # None | "prompt" | "response"
    prompt_tokens: int = 0  # leading positions that belong to the prompt (its special tokens included)


@dataclass
class EncodedPair:
    chosen: EncodedSequence
    rejected: EncodedSequence
    target: float = 1.0
    weight: float = 1.0

    @property
    def truncated(self) -> bool:
        return self.chosen.truncation is not None or self.rejected.truncation is not None

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass
class TruncationStats:
    n_pairs: int = 0
    n_truncated_pairs: int = 0          # pairs where either side was cut
    n_prompt_truncated: int = 0         # sequences whose prompt was cut (from the left) or dropped
    n_response_truncated: int = 0       # sequences whose response alone exceeded max_length (kept its start)
    max_length: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class PairEncoder:
    """prompt + response → token ids under ``max_length``, cutting the prompt from the left first.

    Uses the fast tokenizer's backend (a private copy with padding and truncation switched off) so the special
    tokens come from the tokenizer's own post-processor template.
    """

    def __init__(self, tokenizer: Any, max_length: int, kind: str = "encoder"):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer (tokenizer.json is needed)")
        self.tok = Tokenizer.from_str(backend.to_str())
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_length = int(max_length)
        self.kind = kind
        self.n_special_pair = self._n_special(pair=True)
        self.n_special_single = self._n_special(pair=False)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_id = eos if kind == "decoder" else None
        if self.max_length < self.n_special_pair + 2 + (1 if self.eos_id is not None else 0):
            raise ValueError(f"max_length={max_length} leaves no room for text")

    def _n_special(self, pair: bool) -> int:
        a = self.tok.encode("a", add_special_tokens=False)
        b = self.tok.encode("b", add_special_tokens=False) if pair else None
        return len(self.tok.post_process(a, b, add_special_tokens=True).ids) - len(a.ids) - (len(b.ids) if b else 0)

    def encode(self, prompt: str, response: str) -> EncodedSequence:
        p = self.tok.encode(prompt, add_special_tokens=False) if prompt else None
        r = self.tok.encode(response, add_special_tokens=False)
        extra = 0
        paired = p is not None and len(p.ids) > 0
        enc = self.tok.post_process(p, r, add_special_tokens=True) if paired else \
            self.tok.post_process(r, None, add_special_tokens=True)
        if self.eos_id is not None and (not enc.ids or enc.ids[-1] != self.eos_id):
            extra = 1
        truncation = None
        if len(enc.ids) + extra > self.max_length:
            p_len = len(p.ids) if p is not None else 0
            keep_prompt = self.max_length - extra - self.n_special_pair - len(r.ids)
            if p_len and keep_prompt >= 1:
                truncation = "prompt"
                p.truncate(keep_prompt, direction="left")
                enc = self.tok.post_process(p, r, add_special_tokens=True)
            else:
                paired = False
                budget = self.max_length - extra - self.n_special_single
                truncation = "response" if len(r.ids) > budget else "prompt"
                if len(r.ids) > budget:
                    r.truncate(budget, direction="right")
                enc = self.tok.post_process(r, None, add_special_tokens=True)
        ids, types = list(enc.ids), list(enc.type_ids)
        # the prompt's positions: everything before the response's first token (0 when the prompt was dropped)
        prompt_tokens = next((i for i, s in enumerate(enc.sequence_ids) if s == 1), 0) if paired else 0
        if extra and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)
            types.append(types[-1] if types else 0)
        assert len(ids) <= self.max_length, (len(ids), self.max_length)
        return EncodedSequence(ids, types, truncation, prompt_tokens)

    def encode_pairs(self, pairs: Sequence[PreferencePair]) -> tuple[list[EncodedPair], TruncationStats]:
        stats = TruncationStats(max_length=self.max_length)
        out: list[EncodedPair] = []
        for pair in pairs:
            c = self.encode(pair.prompt, pair.chosen)
            r = self.encode(pair.prompt, pair.rejected)
            ep = EncodedPair(c, r, pair.target, pair.weight)
            stats.n_pairs += 1
            stats.n_truncated_pairs += int(ep.truncated)
            for s in (c, r):
                stats.n_prompt_truncated += int(s.truncation == "prompt")
                stats.n_response_truncated += int(s.truncation == "response")
            out.append(ep)
        return out, stats


# datasets and batches -------------------------------------------------------------------------------------------


class PairDataset(Dataset):
    """Encoded pairs. Index with an int, or with ``("pad", i)`` for a zero-weight copy of pair i (used to give every
    rank a non-empty slice of a short final global batch)."""

    def __init__(self, pairs: Sequence[EncodedPair]):
        self.pairs = list(pairs)
        self.lengths = [p.length for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: Any) -> EncodedPair:
        if isinstance(key, tuple):
            p = self.pairs[key[1]]
            return EncodedPair(p.chosen, p.rejected, p.target, 0.0)
        return self.pairs[key]


@dataclass
class PairCollator:
    """Pad chosen+rejected of a batch to the longest sequence; ``n_tokens`` counts the real (non-pad) tokens."""

    pad_id: int
    padding_side: str = "right"

    def pad(self, seqs: Sequence[Any], prompt_mask: bool = False) -> dict[str, torch.Tensor]:
        """Token sequences (with ``input_ids`` and ``token_type_ids``) padded to the longest, on padding_side;
        with ``prompt_mask`` also which positions hold the prompt (serving pools them into an embedding)."""
        length = max(len(s.input_ids) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(seqs), length), dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        prompt = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s.input_ids)
            start = 0 if self.padding_side == "right" else length - n
            ids[i, start:start + n] = torch.tensor(s.input_ids)
            types[i, start:start + n] = torch.tensor(s.token_type_ids)
            mask[i, start:start + n] = 1
            prompt[i, start:start + getattr(s, "prompt_tokens", 0)] = 1
        out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {**out, "prompt_mask": prompt} if prompt_mask else out

    def __call__(self, items: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = self.pad([p.chosen for p in items] + [p.rejected for p in items])
        return {
            **batch,
            "target": torch.tensor([p.target for p in items], dtype=torch.float32),
            "weight": torch.tensor([p.weight for p in items], dtype=torch.float32),
            "n_tokens": batch["attention_mask"].sum(),
        }


def global_batches(lengths: Sequence[int], global_batch_size: int, seed: int, epoch: int, shuffle: bool,
                   group_by_length: bool, mega_batch_mult: int = 50) -> list[list[int]]:
    """The epoch's sequence of global batches (lists of dataset indices).

    Shuffle + length grouping: a seeded permutation is cut into mega-batches of ``mega_batch_mult`` global
    batches, each sorted by length (longest first) and cut into global batches; then the batch order is shuffled.
    Without shuffle: dataset order (sorted by length when grouping), so evaluation pads little.
    """
    n = len(lengths)
    lens = np.asarray(lengths)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        if group_by_length:
            mega = global_batch_size * mega_batch_mult
            order = np.concatenate([chunk[np.argsort(-lens[chunk], kind="stable")]
                                    for chunk in np.array_split(order, range(mega, n, mega))]) if n else order
        batches = [order[i:i + global_batch_size].tolist() for i in range(0, n, global_batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]
    order = np.argsort(-lens, kind="stable") if group_by_length else np.arange(n)
    return [order[i:i + global_batch_size].tolist() for i in range(0, n, global_batch_size)]


class PairBatchSampler(Sampler[list]):
    """This rank's slice of each global batch, seeded by (seed, epoch), resumable.

    Rank r of W takes ``global_batch[r::W]`` (strided, so length-sorted batches stay balanced). A global batch with
    fewer than W pairs is topped up with zero-weight copies so every rank has a batch and DDP stays in lock-step.
    ``len()`` is the number of global batches in an epoch; after :meth:`resume` the next iteration skips the
    batches already consumed.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, group_by_length: bool = True, mega_batch_mult: int = 50):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0
        self.start = 0  # global batches of `epoch` to skip at the next iteration (resume)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.global_batch_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.start = 0

    def resume(self, epoch: int, consumed: int) -> None:
        """Continue epoch ``epoch`` after its first ``consumed`` global batches."""
        if consumed >= len(self):
            epoch, consumed = epoch + 1, 0
        self.epoch, self.start = int(epoch), int(consumed)

    def rank_slice(self, batch: list[int]) -> list[Any]:
        mine: list[Any] = batch[self.rank::self.world_size]
        if not mine:  # short final global batch: a zero-weight copy keeps this rank in step
            mine = [("pad", batch[self.rank % len(batch)])]
        return mine

    def __iter__(self) -> Iterator[list[Any]]:
        batches = global_batches(self.lengths, self.global_batch_size, self.seed, self.epoch, self.shuffle,
                                 self.group_by_length, self.mega_batch_mult)
        start, self.start = self.start, 0
        for batch in batches[start:]:
            yield self.rank_slice(batch)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`PairBatchSampler` that knows how many batches it has handed out this epoch.

    Lightning treats any dataloader with ``state_dict``/``load_state_dict`` as resumable: it saves the state in
    every checkpoint and loads it back before iterating on resume. The count is taken where batches leave the
    loader (not in the sampler, which worker processes read ahead of time), so it equals the number of batches
    the training loop received. Lightning calls ``len()`` and (through the LightningModule) ``set_epoch``.
    """

    def __init__(self, dataset: PairDataset, batch_sampler: PairBatchSampler, collate_fn: PairCollator,
                 num_workers: int = 0, **kwargs: Any):
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers,
                         **kwargs)
        self._epoch = batch_sampler.epoch
        self._consumed = 0

    @property
    def pair_sampler(self) -> PairBatchSampler:
        return self.batch_sampler  # type: ignore[return-value]

    def set_epoch(self, epoch: int) -> None:
        self.pair_sampler.set_epoch(epoch)

    def __iter__(self):  # type: ignore[override]
        sampler = self.pair_sampler
        self._epoch, self._consumed = sampler.epoch, sampler.start
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        s = self.pair_sampler
        return {"epoch": self._epoch, "consumed": self._consumed, "seed": s.seed, "n_pairs": len(s.lengths),
                "global_batch_size": s.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.pair_sampler
        if state.get("n_pairs") != len(s.lengths) or state.get("seed") != s.seed:
            raise ValueError(f"cannot resume the data position: the checkpoint was taken with {state.get('n_pairs')} "
                             f"training pairs and seed {state.get('seed')}, this run has {len(s.lengths)} pairs and "
                             f"seed {s.seed}; use a fresh output directory for different data")
        consumed = int(state["consumed"])
        if state.get("global_batch_size") != s.global_batch_size:
            # A different world size regroups the epoch; continue at the same number of pairs seen.
            consumed = math.ceil(consumed * state["global_batch_size"] / s.global_batch_size)
            warnings.warn(f"global batch size changed from {state['global_batch_size']} to {s.global_batch_size}; "
                          "the data position of the resumed epoch is approximate", stacklevel=2)
        s.resume(int(state["epoch"]), consumed)
        self._epoch, self._consumed = s.epoch, s.start


def make_loader(pairs: Sequence[EncodedPair], *, batch_size: int, pad_id: int, padding_side: str = "right",
                world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                group_by_length: bool = True, mega_batch_mult: int = 50, num_workers: int = 0) -> ResumableDataLoader:
    dataset = PairDataset(pairs)
    sampler = PairBatchSampler(dataset.lengths, batch_size, world_size=world_size, rank=rank, seed=seed,
                               shuffle=shuffle, group_by_length=group_by_length, mega_batch_mult=mega_batch_mult)
    return ResumableDataLoader(dataset, sampler, PairCollator(pad_id, padding_side), num_workers=num_workers,
                               persistent_workers=False)


@dataclass
class PreparedData:
    """Encoded train/val pairs plus what truncation did to them."""

    train: list[EncodedPair]
    val: list[EncodedPair]
    train_stats: TruncationStats
    val_stats: TruncationStats
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_truncated(self) -> int:
        return self.train_stats.n_truncated_pairs + self.val_stats.n_truncated_pairs
