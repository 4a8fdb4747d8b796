"""The tiny preset's shipped tokenizer is reproducible from the bundled data and round-trips text."""

from rlhf_assets.policy.model import tiny_tokenizer
from rlhf_assets.policy.tiny_tokenizer import TINY_TOKENIZER_DIR, VOCAB_SIZE, build_tiny_tokenizer


def test_rebuilding_the_tiny_tokenizer_gives_the_shipped_files(tmp_path):
    out = build_tiny_tokenizer(tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name


def test_tiny_tokenizer_round_trips_and_has_the_special_tokens():
    tok = tiny_tokenizer()
    text = "\n\nHuman: Ça va? 你好 — how do I bake bread?\n\nAssistant: Mix flour, water and yeast."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok) == VOCAB_SIZE and tok.padding_side == "left"
    assert {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id} == {0, 1, 2}
