"""eurotron-prepare end to end: readers, tokenizer (and its transformers twin), shards, manifest."""

from __future__ import annotations

import gzip
import inspect
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eurotron.config import PrepareConfig, SourceConfig, TokenizerConfig
from eurotron.data.errors import DataError
from eurotron.data.loader import TokenDataset
from eurotron.data.prepare import prepare
from eurotron.data.readers import iter_documents
from eurotron.data.tokenizer import Tokenizer, sha256_file, train_sentencepiece

REPO = Path(__file__).resolve().parents[1]
VOCAB = 400

WORDS = {
    "en": "the library of europe keeps old books and readers come every day to study history",
    "de": "die Bibliothek bewahrt alte Bücher und Leser kommen täglich über die Straße zur Größe",
    "fr": "la bibliothèque garde de vieux livres et les lecteurs viennent étudier l'histoire à côté",
    "pl": "biblioteka przechowuje stare książki a czytelnicy przychodzą codziennie żółć źródło łódź",
    "el": "η βιβλιοθήκη φυλάει παλιά βιβλία και οι αναγνώστες έρχονται κάθε μέρα",
    "cs": "knihovna uchovává staré knihy a čtenáři přicházejí každý den studovat dějiny",
}
# Rare in the corpus, so they are not learned as pieces: they exercise byte fallback.
RARE = "日本語の図書館 😀 🇪🇺 ∮ Ω≈ç"
MULTILINGUAL = [
    "Die Bibliothek in Łódź öffnet um 9 Uhr; 12345 Bücher über Ελλάδα.",
    "La bibliothèque d'été à Besançon — naïve café, œuvre, Ægir.",
    "  leading spaces,  double  spaces and a trailing one ",
    "tabs\tand\nnew lines\n\nand digits 3.14159 2026",
    RARE,
    "中文字符测试，还有更多的汉字。",
    "x",
]


def make_docs(n, seed=0):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lang = rng.choice(sorted(WORDS))
        words = WORDS[lang].split()
        sentences = []
        for _ in range(rng.randint(1, 5)):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            if rng.random() < 0.3:
                sentence += f" {rng.randint(0, 99999)}"
            sentences.append(sentence.capitalize() + rng.choice([".", "!", "?"]))
        if i % 97 == 5:
            sentences.append(RARE)
        docs.append({"text": " ".join(sentences), "lang": lang, "url": f"https://example.eu/{i}",
                     "date": f"2024-01-{1 + i % 28:02d}"})
    # Documents that must be skipped and counted, never silently dropped.
    docs[10]["text"] = ""
    docs[20]["text"] = "   \n\t "
    return docs


def write_jsonl(path, docs, opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def config(source, output_dir, **kwargs):
    tokenizer = kwargs.pop("tokenizer", TokenizerConfig(vocab_size=VOCAB))
    return PrepareConfig(source=source, tokenizer=tokenizer, output_dir=str(output_dir), **kwargs)


def all_docs(path, split):
    dataset = TokenDataset(path, split, verify=True)
    return [dataset.doc(i) for i in range(dataset.num_docs)]


@pytest.fixture(scope="module")
def corpus():
    return make_docs(600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("prepared")
    source = SourceConfig(type="jsonl", path=str(write_jsonl(root / "corpus.jsonl", corpus)))
    manifest = prepare(config(source, root / "out", shard_tokens=4000, eval_every_nth_document=10),
                       progress=False)
    return root / "out", manifest


# ------------------------------------------------------------------------------------ end to end
def test_jsonl_end_to_end_manifest_and_contents(prepared, corpus):
    out, manifest = prepared
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "eurotron-tokens" and manifest["format_version"] == 1
    assert manifest["source"]["type"] == "jsonl" and manifest["dtype"] == "uint16"
    docs = manifest["documents"]
    assert docs == {"read": 600, "kept": 598, "skipped": {"empty": 2},
                    "languages": docs["languages"]}
    assert sum(docs["languages"].values()) == 598 and set(docs["languages"]) == set(WORDS)
    tok = manifest["tokenizer"]
    assert tok["type"] == "sentencepiece" and tok["vocab_size"] == VOCAB
    assert (tok["unk_id"], tok["bos_id"], tok["eos_id"], tok["pad_id"]) == (0, 1, 2, 3)
    assert tok["sha256"] == sha256_file(out / "tokenizer" / tok["model_file"])
    train, evaluation = manifest["splits"]["train"], manifest["splits"]["eval"]
    assert train["docs"] + evaluation["docs"] == 598 and evaluation["docs"] == 59
    assert len(train["shards"]) > 1  # shard_tokens=4000 rolls over
    for split in (train, evaluation):
        assert split["tokens"] == sum(s["tokens"] for s in split["shards"])
        assert all(len(s["sha256_bin"]) == 64 for s in split["shards"])
    assert manifest["timing"]["tokens_per_s"] > 0
    # No temporary directories are left next to the output.
    assert sorted(p.name for p in out.parent.iterdir()) == ["corpus.jsonl", "out"]

    # Every kept document is in its split, in order, and decodes back to its text + EOS.
    tokenizer = Tokenizer.load(out / "tokenizer")
    kept = [d["text"] for d in corpus if d["text"].strip()]
    want = {"train": [t for k, t in enumerate(kept) if k % 10 != 9],
            "eval": [t for k, t in enumerate(kept) if k % 10 == 9]}
    for split, texts in want.items():
        got = all_docs(out, split)
        assert len(got) == len(texts)
        for ids, text in zip(got, texts):
            assert ids[-1] == tokenizer.eos_id and tokenizer.eos_id not in ids[:-1]
            assert ids[:-1].tolist() == tokenizer.encode(text)
            assert tokenizer.decode(ids[:-1]) == text


def test_refuses_to_overwrite_then_replaces(prepared, tmp_path, corpus):
    out, manifest = prepared
    source = SourceConfig(type="jsonl", path=manifest["source"]["path"])
    with pytest.raises(DataError, match="overwrite=true"):
        prepare(config(source, out), progress=False)
    target = tmp_path / "copy"
    first = prepare(config(source, target, eval_every_nth_document=0), progress=False)
    assert set(first["splits"]) == {"train"} and not (target / "eval").exists()
    second = prepare(config(source, target, overwrite=True), progress=False)
    assert set(second["splits"]) == {"train", "eval"} and (target / "eval").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    # overwrite=true never replaces a directory eurotron-prepare did not write.
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match="not a dataset eurotron-prepare wrote"):
        prepare(config(source, tmp_path / "precious", overwrite=True), progress=False)
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_failed_run_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    with pytest.raises(DataError):
        prepare(config(SourceConfig(type="jsonl", path=str(bad)), tmp_path / "new" / "dirs" / "out"),
                progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_gzip_parquet_and_datasets_sources_give_the_same_tokens(prepared, tmp_path, corpus):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, _ = prepared
    reused = TokenizerConfig(type="sentencepiece", path=str(out / "tokenizer"))
    reference = all_docs(out, "train") + all_docs(out, "eval")

    gz = write_jsonl(tmp_path / "corpus.jsonl.gz", corpus, opener=gzip.open)
    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    rows = [{**{k: v for k, v in d.items() if k != "text"}, "content": d["text"]} for d in corpus]
    for part in range(3):  # a directory of files, read in name order
        pq.write_table(pa.Table.from_pylist(rows[part * 200:(part + 1) * 200]),
                       parquet_dir / f"part-{part}.parquet", row_group_size=64)
    datasets.Dataset.from_list(corpus).save_to_disk(str(tmp_path / "saved"))
    sources = {
        "gz": SourceConfig(type="jsonl", path=str(gz)),
        "parquet": SourceConfig(type="parquet", path=str(parquet_dir), text_field="content"),
        "saved": SourceConfig(type="hf", path=str(tmp_path / "saved")),
        "json_file": SourceConfig(type="hf", path=str(tmp_path / "corpus.jsonl.gz")),
    }
    for name, source in sources.items():
        target = tmp_path / f"out_{name}"
        manifest = prepare(config(source, target, tokenizer=reused, eval_every_nth_document=10), progress=False)
        assert manifest["documents"]["skipped"] == {"empty": 2}, name
        got = all_docs(target, "train") + all_docs(target, "eval")
        assert len(got) == len(reference), name
        assert all(np.array_equal(a, b) for a, b in zip(got, reference)), name


# ---------------------------------------------------------------------------------------- readers
def test_readers_stream_and_keep_metadata(tmp_path, corpus):
    path = write_jsonl(tmp_path / "c.jsonl", corpus[:3])
    with open(path, "a") as handle:
        handle.write("{not json\n")
    stream = iter_documents(SourceConfig(type="jsonl", path=str(path)))
    assert inspect.isgenerator(stream)
    first = next(stream)
    assert first == corpus[0]  # url, lang, date preserved
    next(stream), next(stream)
    with pytest.raises(DataError, match=r"c\.jsonl:4: malformed JSON"):
        next(stream)  # the bad line is only reached after the good ones streamed out


@pytest.mark.parametrize("native", ["1", "0"])
def test_token_ids_outside_the_vocabulary_stop_the_run(prepared, tmp_path, corpus, monkeypatch, native):
    out, _ = prepared
    monkeypatch.setenv("EUROTRON_NATIVE", native)
    encode = Tokenizer.encode_batch
    monkeypatch.setattr(Tokenizer, "encode_batch",
                        lambda self, texts, threads=None: [ids + [self.vocab_size + 7] for ids in encode(self, texts, threads)])
    source = SourceConfig(type="jsonl", path=str(write_jsonl(tmp_path / "c.jsonl", corpus[:20])))
    reused = TokenizerConfig(type="sentencepiece", path=str(out / "tokenizer"))
    with pytest.raises(DataError, match=rf"ids outside \[0, {VOCAB}\).*{VOCAB + 7}.*vocabulary size is wrong"):
        prepare(config(source, tmp_path / "out", tokenizer=reused), progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_gzip_is_a_clear_error_after_the_lines_before_it(tmp_path, corpus):
    path = write_jsonl(tmp_path / "c.jsonl.gz", corpus[:50], opener=gzip.open)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])  # a copy that stopped part-way
    stream = iter_documents(SourceConfig(type="jsonl", path=str(path)))
    read = 0
    with pytest.raises(DataError, match=r"c\.jsonl\.gz:\d+: cannot read the file"):
        for _ in stream:
            read += 1
    assert 0 < read < 50


def test_parquet_reader_renames_text_field_and_keeps_others(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a", "b"], "url": ["u1", "u2"]}), tmp_path / "x.parquet")
    stream = iter_documents(SourceConfig(type="parquet", path=str(tmp_path / "x.parquet"), text_field="content"))
    assert inspect.isgenerator(stream)
    assert list(stream) == [{"text": "a", "url": "u1"}, {"text": "b", "url": "u2"}]


def test_hf_directory_of_data_files_and_byte_order_mark(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.jsonl").write_text('{"text": "eins", "lang": "de"}\n{"text": "zwei", "lang": "de"}\n')
    stream = iter_documents(SourceConfig(type="hf", path=str(tmp_path / "files")))
    assert [d["text"] for d in stream] == ["eins", "zwei"]
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"text": "první"}\n'.encode("utf-8"))
    assert list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "bom.jsonl")))) == [{"text": "první"}]


def test_datasetdict_split_selection(tmp_path):
    import datasets

    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": "one"}, {"text": "two"}]),
        "validation": datasets.Dataset.from_list([{"text": "three"}]),
    }).save_to_disk(str(tmp_path / "dd"))
    texts = [d["text"] for d in iter_documents(SourceConfig(type="hf", path=str(tmp_path / "dd"), split="validation"))]
    assert texts == ["three"]
    with pytest.raises(DataError, match="available splits: train, validation"):
        list(iter_documents(SourceConfig(type="hf", path=str(tmp_path / "dd"), split="test")))


def test_bad_inputs_have_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(DataError, match="no such file"):
        list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "missing.jsonl"))))
    (tmp_path / "f.jsonl").write_text('{"body": "x", "url": "u"}\n')
    with pytest.raises(DataError) as info:
        list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "f.jsonl"))))
    message = str(info.value)
    assert "'text'" in message and "body, url" in message and "source.text_field" in message
    assert "f.jsonl:1" in message
    (tmp_path / "n.jsonl").write_text('{"text": "ok"}\n\n{"text": null}\n')
    with pytest.raises(DataError, match=r"n\.jsonl:3: .*NoneType, not a string"):
        list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "n.jsonl"))))
    (tmp_path / "a.jsonl").write_text('["a list"]\n')
    with pytest.raises(DataError, match="JSON object"):
        list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "a.jsonl"))))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="available fields: body"):
        list(iter_documents(SourceConfig(type="parquet", path=str(tmp_path / "p.parquet"))))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "i.parquet")
    with pytest.raises(DataError, match="not string"):
        list(iter_documents(SourceConfig(type="parquet", path=str(tmp_path / "i.parquet"))))
    with pytest.raises(DataError, match="source.type"):
        iter_documents(SourceConfig(type="csv", path="x"))
    (tmp_path / "e.jsonl").write_text('{"text": "  "}\n{"text": ""}\n')
    with pytest.raises(DataError, match="every document is empty"):
        prepare(config(SourceConfig(type="jsonl", path=str(tmp_path / "e.jsonl")), tmp_path / "o"), progress=False)
    with pytest.raises(DataError, match="eval_every_nth_document"):
        prepare(config(SourceConfig(), tmp_path / "o", eval_every_nth_document=1), progress=False)


# -------------------------------------------------------------------------------------- tokenizer
def test_saved_tokenizer_matches_transformers(prepared):
    from transformers import AutoTokenizer

    out, _ = prepared
    ours = Tokenizer.load(out / "tokenizer")
    theirs = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    byte_ids = set(range(4, 4 + 256))
    ids = ours.encode_batch(MULTILINGUAL + ["a </s> b <s>"])
    assert byte_ids & set(ids[MULTILINGUAL.index(RARE)])  # byte fallback was needed here
    for text, expected in zip(MULTILINGUAL + ["a </s> b <s>"], ids):
        assert theirs(text, split_special_tokens=True)["input_ids"] == expected, text
        assert ours.decode(expected) == text == theirs.decode(expected)
    for text, expected in zip(MULTILINGUAL, ids):
        assert theirs(text)["input_ids"] == expected  # no BOS/EOS added by default either
    assert ours.encode("") == [] and ours.encode(" ") != []
    assert (theirs.unk_token_id, theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (0, 1, 2, 3)
    assert ours.unk_id == 0 and ours.eos_id not in ours.encode("a </s> b")  # "</s>" in text stays text


def test_hf_tokenizer_type_loads_a_transformers_directory(prepared, tmp_path):
    from transformers import AutoTokenizer

    out, manifest = prepared
    hf_dir = tmp_path / "hf_tokenizer"
    AutoTokenizer.from_pretrained(str(out / "tokenizer")).save_pretrained(str(hf_dir))
    assert not (hf_dir / "eurotron_tokenizer.json").exists()
    loaded = Tokenizer.load(hf_dir)
    assert loaded.kind == "hf" and loaded.vocab_size == VOCAB and loaded.eos_id == 2
    source = SourceConfig(type="jsonl", path=manifest["source"]["path"])
    hf_manifest = prepare(config(source, tmp_path / "out", eval_every_nth_document=10,
                                 tokenizer=TokenizerConfig(type="hf", path=str(hf_dir))), progress=False)
    assert hf_manifest["tokenizer"]["type"] == "hf"
    assert hf_manifest["tokenizer"]["sha256"] == sha256_file(tmp_path / "out" / "tokenizer" / "tokenizer.json")
    for split in ("train", "eval"):
        got, want = all_docs(tmp_path / "out", split), all_docs(out, split)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == len(want)
    AutoTokenizer.from_pretrained(str(tmp_path / "out" / "tokenizer"))
    with pytest.raises(DataError, match="tokenizer.path"):
        prepare(config(source, tmp_path / "o2", tokenizer=TokenizerConfig(type="hf")), progress=False)


def test_unigram_and_training_char_cap(tmp_path, corpus):
    from transformers import AutoTokenizer

    texts = [d["text"] for d in corpus]
    tokenizer = train_sentencepiece(iter(texts), tmp_path / "uni", 450, "unigram", max_training_chars=20_000)
    assert tokenizer.training_chars <= 20_000
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "uni"))
    for text in MULTILINGUAL + texts[:50]:
        assert theirs(text)["input_ids"] == tokenizer.encode(text), text
    with pytest.raises(DataError, match="lower tokenizer.vocab_size"):
        train_sentencepiece(iter(texts[:5]), tmp_path / "big", 5000)
    with pytest.raises(DataError, match="model_type"):
        train_sentencepiece(iter(texts), tmp_path / "x", 400, "wordpiece")


def test_foreign_sentencepiece_model_converts_exactly(tmp_path, corpus):
    """A model trained with SentencePiece's defaults (NFKC, whitespace squeezing), reused via
    tokenizer.path, still gets transformers files that agree with it."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([d["text"] for d in corpus]), model_writer=model,
                                   vocab_size=VOCAB, byte_fallback=True, minloglevel=2)
    (tmp_path / "m.model").write_bytes(model.getvalue())
    ours = Tokenizer.from_sentencepiece(tmp_path / "m.model")
    ours.save(tmp_path / "saved")
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    for text in MULTILINGUAL + ["  lots   of   space  ", "Ｆｕｌｌｗｉｄｔｈ ① ﬁ"]:
        assert theirs(text)["input_ids"] == ours.encode(text), text
    assert Tokenizer.load(tmp_path / "saved").kind == "sentencepiece"


# -------------------------------------------------------------------------------------- CLI/config
def test_prepare_yaml_composes_to_demo_defaults():
    from eurotron.compose import compose_prepare

    cfg = compose_prepare(["tokenizer.vocab_size=512"])
    assert isinstance(cfg, PrepareConfig) and cfg.source.type == "demo" and cfg.output_dir == "data/demo"
    assert cfg.tokenizer.vocab_size == 512 and cfg.tokenizer.type == "sentencepiece"
    assert cfg.overwrite is False


def test_cli_end_to_end(tmp_path, corpus):
    write_jsonl(tmp_path / "c.jsonl", corpus[:200])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "eurotron.cli.prepare", "source.type=jsonl", "source.path=c.jsonl",
            "output_dir=tok", f"tokenizer.vocab_size={VOCAB}"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "200 read, 198 kept, 2 skipped (empty)" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "tok"]  # no Hydra droppings
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "overwrite=true" in again.stderr
