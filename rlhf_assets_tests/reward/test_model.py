"""Where the score is read (encoder: first token; decoder: last real token, left or right padding), seeded init,
the LR schedule."""

import pytest
import torch

from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.model import linear_warmup_decay
from rlhf_assets.reward.network import build_reward_net, first_real_token_index, last_real_token_index


@pytest.fixture(scope="module")
def encoder():
    net, tok = build_reward_net(RMConfig(preset="tiny", max_length=64, seed=3))
    return net.eval(), tok


@pytest.fixture(scope="module")
def decoder():
    net, tok = build_reward_net(RMConfig(preset="tiny-decoder", max_length=64, seed=3))
    return net.eval(), tok


def _batch(seqs, pad_id, side):
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(length - len(s), length)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


SEQS = [[101, 7592, 2088, 102], [101, 2204, 3433, 2003, 2307, 1012, 102]]


def test_indices_from_the_attention_mask():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_real_token_index(right).tolist() == [2, 4]
    assert last_real_token_index(left).tolist() == [4, 4]
    assert first_real_token_index(right).tolist() == [0, 0]
    assert first_real_token_index(left).tolist() == [2, 0]


@torch.no_grad()
def test_decoder_scores_the_last_real_token_with_right_and_left_padding(decoder):
    net, tok = decoder
    assert net.kind == "decoder"
    ids_r, mask_r = _batch(SEQS, tok.pad_token_id, "right")
    ids_l, mask_l = _batch(SEQS, tok.pad_token_id, "left")
    assert net.score_index(mask_r).tolist() == [3, 6] and net.score_index(mask_l).tolist() == [6, 6]
    right, left = net(ids_r, mask_r), net(ids_l, mask_l)
    alone = torch.cat([net(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in SEQS])
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    # the score is the head applied to the hidden state of the last real token
    hidden = net.backbone(input_ids=ids_r, attention_mask=mask_r).last_hidden_state
    torch.testing.assert_close(right, net.head(hidden[torch.arange(2), torch.tensor([3, 6])]).squeeze(-1))


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
def test_changing_padding_tokens_never_changes_a_score(decoder, encoder, side):
    for net, tok in (decoder, encoder):
        ids, mask = _batch(SEQS, tok.pad_token_id, side)
        before = net(ids, mask)
        garbage = ids.clone()
        garbage[mask == 0] = 4242  # a real word id in every padding slot
        torch.testing.assert_close(net(garbage, mask), before, atol=1e-6, rtol=1e-6)
        # and a different embedding for the pad token itself changes nothing either
        emb = net.backbone.get_input_embeddings().weight
        saved = emb[tok.pad_token_id].clone()
        emb[tok.pad_token_id] += 3.0
        try:
            torch.testing.assert_close(net(ids, mask), before, atol=1e-5, rtol=1e-5)
        finally:
            emb[tok.pad_token_id] = saved


@torch.no_grad()
def test_encoder_scores_the_first_token(encoder):
    net, tok = encoder
    assert net.kind == "encoder"
    ids, mask = _batch(SEQS, tok.pad_token_id, "right")
    assert net.score_index(mask).tolist() == [0, 0]
    hidden = net.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(net(ids, mask), net.head(hidden[:, 0]).squeeze(-1))


def test_same_seed_same_initial_weights():
    a, _ = build_reward_net(RMConfig(seed=11, max_length=64))
    b, _ = build_reward_net(RMConfig(seed=11, max_length=64))
    c, _ = build_reward_net(RMConfig(seed=12, max_length=64))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.backbone.config.hidden_size == 64 and a.backbone.config.num_hidden_layers == 2
    assert getattr(a.backbone, "pooler", None) is None  # unused parameters would break DDP


def test_linear_warmup_then_linear_decay():
    f = linear_warmup_decay(total_steps=10, warmup_steps=2)
    assert [round(f(s), 4) for s in range(11)] == [0.3333, 0.6667, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25,
                                                   0.125, 0.0]
    g = linear_warmup_decay(total_steps=4, warmup_steps=0)
    assert [g(s) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_small_preset_loads_the_pretrained_minilm_offline():
    from safetensors import safe_open

    from rlhf_assets.reward.network import minilm_path

    net, tok = build_reward_net(RMConfig(preset="small", max_length=64))
    assert net.kind == "encoder" and net.backbone.config.hidden_size == 384
    with safe_open(str(minilm_path() / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight"))
        assert torch.equal(f.get_tensor(key), net.backbone.embeddings.word_embeddings.weight.detach())


def test_hf_preset_reads_a_local_decoder_checkpoint(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_assets.hf_offline import load_tokenizer
    from rlhf_assets.reward.network import minilm_path

    tok = load_tokenizer(minilm_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    net, _ = build_reward_net(RMConfig(preset="hf", model_path=str(tmp_path / "ckpt"), max_length=64))
    assert net.kind == "decoder" and net.backbone.config.model_type == "llama"
    ids, mask = _batch(SEQS, 0, "left")
    assert net(ids, mask).shape == (2,)
    with pytest.raises(ValueError, match="not a directory"):
        build_reward_net(RMConfig(preset="hf", model_path=str(tmp_path / "missing")))


def test_strategies_are_constructed():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from rlhf_assets.reward.train import build_strategy

    net, _ = build_reward_net(RMConfig(max_length=64))
    assert build_strategy(RMConfig(), "cpu", net) == "auto"
    ddp = build_strategy(RMConfig(strategy="ddp", devices=2), "cpu", net)
    assert isinstance(ddp, DDPStrategy) and ddp._process_group_backend == "gloo"
    assert build_strategy(RMConfig(strategy="ddp", devices=2), "gpu", net)._process_group_backend == "nccl"
    fsdp = build_strategy(RMConfig(strategy="fsdp", devices=2), "gpu", net)
    assert isinstance(fsdp, FSDPStrategy) and fsdp._process_group_backend == "nccl"
    from rlhf_assets.reward.network import transformer_block_classes

    assert {c.__name__ for c in transformer_block_classes(net.backbone)} == {"BertLayer"}
