"""Length-balanced reward-model training: pair weights under which length alone predicts nothing."""

import pytest

from rlhf_assets.reward.data import PreferencePair, length_balanced


def _pair(chosen_words: int, rejected_words: int, target: float = 1.0, weight: float = 1.0) -> PreferencePair:
    return PreferencePair("p", " ".join(["c"] * chosen_words), " ".join(["r"] * rejected_words), target, weight)


def test_balanced_weights_make_length_uninformative():
    # 3 pairs where the preferred answer is shorter, 1 where it is longer, 1 of equal length
    pairs = [_pair(2, 9), _pair(3, 7), _pair(1, 4), _pair(8, 2), _pair(5, 5)]
    out, summary = length_balanced(pairs)
    w = [p.weight for p in out]
    assert sum(w[:3]) == pytest.approx(w[3])               # the two groups now weigh the same
    assert sum(w[:4]) == pytest.approx(4.0)                # and the total is unchanged
    assert w[4] == 1.0                                      # equal lengths keep their weight
    assert summary["factor_preferred_longer"] == pytest.approx(2.0)
    assert summary["factor_preferred_shorter"] == pytest.approx(2 / 3)
    # the texts and targets are untouched
    assert [(p.chosen, p.rejected, p.target) for p in out] == [(p.chosen, p.rejected, p.target) for p in pairs]


def test_the_preferred_side_follows_the_target_and_weights_are_kept_or_dropped():
    # target 0.2: the rejected (longer) response is the preferred one
    pairs = [_pair(2, 9, target=0.2, weight=3.0), _pair(2, 9, weight=1.0)]
    out, summary = length_balanced(pairs)
    assert summary["weight_preferred_longer"] == 3.0 and summary["weight_preferred_shorter"] == 1.0
    assert out[0].weight == pytest.approx(2.0) and out[1].weight == pytest.approx(2.0)
    unit, summary = length_balanced(pairs, keep_weights=False)
    assert summary["weight_preferred_longer"] == 1.0 and [p.weight for p in unit] == [1.0, 1.0]


def test_one_sided_data_is_left_alone():
    pairs = [_pair(2, 9), _pair(3, 7)]
    out, _ = length_balanced(pairs)
    assert [p.weight for p in out] == [1.0, 1.0]


@pytest.mark.slow
def test_training_with_length_balance_records_the_weights_it_trained_on(tmp_path):
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.data import read_pairs
    from rlhf_assets.reward.train import train_reward_model
    from rlhf_assets_tests.support import make_pairs, write_jsonl

    rows = make_pairs(24, seed=1)
    for i, row in enumerate(rows):  # 2 of 3 preferred answers shorter than the other one, 1 of 3 longer
        short, long_ = "ok fine", "a much longer answer that goes on for a while"
        row["chosen"], row["rejected"] = (short, long_) if i % 3 else (long_, short)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(8, seed=2))
    cfg = RMConfig(max_length=32, batch_size=8, epochs=1, length_balance=True, use_weights=False)
    result = train_reward_model(cfg, train, val, tmp_path / "w", store_root=str(tmp_path / "s"), progress=False)
    balance = result.manifest["data"]["length_balance_train"]
    assert balance["weight_preferred_shorter"] == 16 and balance["weight_preferred_longer"] == 8
    assert balance["factor_preferred_longer"] == pytest.approx(1.5)
    assert balance["factor_preferred_shorter"] == pytest.approx(0.75)
    assert len(read_pairs(train)) == 24  # nothing dropped: balancing only reweights
