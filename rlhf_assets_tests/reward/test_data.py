"""Pairs files, tokenisation with prompt-side truncation, batching, length grouping and the resumable loader."""

import json

import numpy as np
import pytest

from rlhf_assets.hf_offline import load_tokenizer
from rlhf_assets.reward.data import (
    PairBatchSampler,
    PairEncoder,
    PairsFormatError,
    PreferencePair,
    global_batches,
    make_loader,
    read_pairs,
)
from rlhf_assets.reward.network import minilm_path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_path())


def test_read_pairs_defaults_and_optional_fields(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n\n"
                 + json.dumps({"prompt": "", "chosen": "a", "rejected": "b", "target": 0.7, "weight": 2}) + "\n")
    pairs = read_pairs(p)
    assert pairs == [PreferencePair("q", "a", "b", 1.0, 1.0), PreferencePair("", "a", "b", 0.7, 2.0)]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a"]', "JSON object"),
    ('{"prompt": "q", "chosen": "a"}', "missing field.*rejected"),
    ('{"prompt": "q", "chosen": 3, "rejected": "b"}', "'chosen' must be a string"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "target": 1.5}', "'target' must be in"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "weight": -1}', "'weight' must be in"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "weight": true}', "'weight' must be a finite number"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + line + "\n")
    with pytest.raises(PairsFormatError, match=rf"bad.jsonl:2: .*{message}"):
        read_pairs(p)


def test_no_truncation_uses_the_tokenizer_template(tokenizer):
    enc = PairEncoder(tokenizer, 64).encode("hello there", "general kenobi")
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["[CLS]", "hello", "there", "[SEP]", "general", "ken", "##ob", "##i", "[SEP]"]
    assert enc.token_type_ids == [0, 0, 0, 0, 1, 1, 1, 1, 1] and enc.truncation is None
    # empty prompt: the response alone
    assert tokenizer.convert_ids_to_tokens(PairEncoder(tokenizer, 64).encode("", "yes").input_ids) == \
        ["[CLS]", "yes", "[SEP]"]


def test_long_prompt_is_cut_from_the_left_and_the_response_kept(tokenizer):
    prompt = " ".join(f"w{i}" for i in range(100)) + " final question"
    response = "the answer is forty two"
    enc = PairEncoder(tokenizer, 24).encode(prompt, response)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert len(enc.input_ids) == 24 and enc.truncation == "prompt"
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokenizer.decode(enc.input_ids, skip_special_tokens=True).endswith("final question the answer is forty two")
    sep = tokens.index("[SEP]")
    assert tokens[sep + 1:-1] == tokenizer.tokenize(response)  # response intact
    assert "w0" not in tokens and tokens[sep - 2:sep] == ["final", "question"]  # the start of the prompt went


def test_response_longer_than_max_length_keeps_its_start_and_special_tokens(tokenizer):
    response = " ".join(f"r{i}" for i in range(60))
    enc = PairEncoder(tokenizer, 16).encode("some prompt", response)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert len(tokens) == 16 and enc.truncation == "response"
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1:-1] == tokenizer.tokenize(response)[:14]


def test_truncated_pairs_are_counted_and_none_dropped(tokenizer):
    long_prompt = "word " * 200
    pairs = [PreferencePair("short", "yes", "no"),
             PreferencePair(long_prompt, "yes", "no"),
             PreferencePair("short", "x " * 100, "no")]
    encoded, stats = PairEncoder(tokenizer, 32).encode_pairs(pairs)
    assert len(encoded) == 3 and stats.n_pairs == 3
    assert stats.n_truncated_pairs == 2
    assert stats.n_prompt_truncated == 2       # both sides of pair 2
    assert stats.n_response_truncated == 1     # chosen of pair 3
    assert all(max(len(e.chosen.input_ids), len(e.rejected.input_ids)) <= 32 for e in encoded)
    assert [e.truncated for e in encoded] == [False, True, True]


def test_decoder_appends_eos_when_the_tokenizer_has_one(tokenizer):
    class WithEos:
        backend_tokenizer = tokenizer.backend_tokenizer
        eos_token_id = 999

    enc = PairEncoder(WithEos(), 16, kind="decoder").encode("p " * 40, "answer")
    assert enc.input_ids[-1] == 999 and len(enc.input_ids) == 16 and enc.truncation == "prompt"


def _encoded(tokenizer, n, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [PreferencePair(" ".join(["p"] * int(rng.integers(1, 30))), "good " * int(rng.integers(1, 5)),
                            "bad") for _ in range(n)]
    return PairEncoder(tokenizer, 64).encode_pairs(pairs)[0]


def test_batch_puts_chosen_then_rejected_in_one_padded_tensor(tokenizer):
    loader = make_loader(_encoded(tokenizer, 6), batch_size=3, pad_id=0, shuffle=False, group_by_length=False)
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 6 and batch["target"].shape == (3,)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max())  # dynamic padding to the longest
    assert int(batch["n_tokens"]) == int(lengths.sum())
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    left = make_loader(_encoded(tokenizer, 6), batch_size=3, pad_id=0, padding_side="left", shuffle=False,
                       group_by_length=False)
    lb = next(iter(left))
    assert (lb["attention_mask"][:, -1] == 1).all()  # left padding: real tokens at the end


def test_length_grouping_is_seeded_and_groups_lengths():
    lengths = list(np.random.default_rng(0).integers(1, 200, size=400))
    a = global_batches(lengths, 8, seed=3, epoch=0, shuffle=True, group_by_length=True, mega_batch_mult=10)
    assert a == global_batches(lengths, 8, seed=3, epoch=0, shuffle=True, group_by_length=True, mega_batch_mult=10)
    assert a != global_batches(lengths, 8, seed=3, epoch=1, shuffle=True, group_by_length=True, mega_batch_mult=10)
    assert sorted(i for b in a for i in b) == list(range(400))
    plain = global_batches(lengths, 8, seed=3, epoch=0, shuffle=True, group_by_length=False)
    spread = lambda bs: np.mean([np.ptp([lengths[i] for i in b]) for b in bs])  # noqa: E731
    assert spread(a) < spread(plain) / 4


def test_ranks_partition_the_same_global_batches():
    lengths = list(range(1, 42))  # 41 pairs
    one = list(PairBatchSampler(lengths, 8, seed=5))
    ranks = [list(PairBatchSampler(lengths, 4, world_size=2, rank=r, seed=5)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 6
    for g, r0, r1 in zip(one, *ranks):
        real = [i for i in r0 + r1 if not isinstance(i, tuple)]
        assert sorted(real) == sorted(g)
    # one global batch has a single pair: rank 1 gets a zero-weight copy of it to stay in step
    k = next(i for i, g in enumerate(one) if len(g) == 1)
    assert ranks[0][k] == one[k] and ranks[1][k] == [("pad", one[k][0])]


def test_padding_copies_have_zero_weight(tokenizer):
    enc = _encoded(tokenizer, 3)
    loaders = [make_loader(enc, batch_size=1, pad_id=0, world_size=2, rank=r, shuffle=False, group_by_length=False)
               for r in (0, 1)]
    weights = [[b["weight"].tolist() for b in loader] for loader in loaders]
    assert weights == [[[1.0], [1.0]], [[1.0], [0.0]]]


def test_loader_state_resumes_at_the_next_unseen_batch(tokenizer):
    enc = _encoded(tokenizer, 30)

    def ids(batches):
        return [b["input_ids"].sum().item() for b in batches]

    full = make_loader(enc, batch_size=4, pad_id=0, seed=7)
    full.set_epoch(1)
    reference = ids(list(full))

    first = make_loader(enc, batch_size=4, pad_id=0, seed=7)
    first.set_epoch(1)
    it = iter(first)
    seen = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == 3

    resumed = make_loader(enc, batch_size=4, pad_id=0, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what the LightningModule does at epoch start: same epoch keeps the position
    assert len(resumed) == len(full)
    assert ids(seen) + ids(list(resumed)) == reference
    resumed.set_epoch(2)
    assert len(list(resumed)) == len(full)

    with pytest.raises(ValueError, match="different data"):
        make_loader(enc[:-1], batch_size=4, pad_id=0, seed=7).load_state_dict(state)


def test_an_empty_response_is_scored_not_refused(tmp_path):
    """HH-RLHF has a few pairs whose response is empty: they train like any other (none dropped)."""
    from rlhf_assets.reward.data import parse_pair

    pair = parse_pair({"prompt": "Human: hi\n\nAssistant:", "chosen": "", "rejected": "go away"})
    assert pair.chosen == "" and pair.rejected == "go away"
