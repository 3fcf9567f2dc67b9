"""The data path: readers → tokenizer → packed token shards → training loader.

readers.py (JSONL / Parquet / `datasets` / demo corpus), tokenizer.py (SentencePiece training and
transformers-compatible saving), shards.py (.bin/.idx format), manifest.py (manifest.json),
prepare.py (eurotron-prepare's work), loader.py (global-index sampler and batches).
Modules are imported where used: importing this package loads neither torch nor transformers.
"""
