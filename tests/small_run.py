"""The small model and prepared dataset that the training tests share (fast on 2 CPU cores)."""

from pathlib import Path

# A small model and batch that fit every layout used in the tests.
SMALL_MODEL = [
    "model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
    "model.num_kv_heads=2", "model.ffn_hidden_size=176", "model.max_seq_len=128",
]


def prepare_dataset(out: Path) -> Path:
    """A small prepared dataset (the shipped demo corpus, 512-token vocabulary)."""
    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    prepare(compose_prepare([f"output_dir={out}", "tokenizer.vocab_size=512"]))
    return out
