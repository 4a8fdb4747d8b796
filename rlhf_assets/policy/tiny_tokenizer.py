"""The ``tiny`` policy preset's tokenizer: a 2,048-token byte-level BPE that ships with the package.

It was trained once on the bundled HH-RLHF sample (prompts and both responses) by :func:`build_tiny_tokenizer`
and saved to ``rlhf_assets/policy/tiny_tokenizer/``; a test rebuilds it and checks the files are identical.
A small vocabulary keeps the tiny policy's output layer (and so CPU rollouts) cheap. Byte-level: every string
round-trips, so nothing a user writes is out of vocabulary.
"""

from __future__ import annotations

from pathlib import Path

TINY_TOKENIZER_DIR = Path(__file__).with_name("tiny_tokenizer")
VOCAB_SIZE = 2048
PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"


def build_tiny_tokenizer(out_dir: str | Path = TINY_TOKENIZER_DIR) -> Path:
    """Train the BPE on the bundled HH sample and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlhf_assets.preference.sample_data import load_hh_pairs

    texts = []
    for pair in load_hh_pairs():
        texts.extend((pair["prompt"], pair["chosen"], pair["rejected"]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, EOS, BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS)
    fast.padding_side = "left"  # prompts are left-padded for generation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    print(build_tiny_tokenizer())
