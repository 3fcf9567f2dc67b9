"""Issue #12, points 5 and 7: prepared shards are checked on open (sizes, ids, sha256 on request),
and the data/convert/generate CLIs answer a user error with one clear message, never a traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from eurotron.data import integrity
from eurotron.data.blend import open_train_dataset
from eurotron.data.errors import DataError, ShardError
from eurotron.data.loader import TokenDataset
from eurotron.data.manifest import FORMAT, FORMAT_VERSION, read_manifest, write_manifest
from eurotron.data.shards import ShardWriter

EOS, VOCAB = 2, 500


def make_dataset(root, n_docs=40, shard_tokens=200, vocab=VOCAB):
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "tokenizer": {"vocab_size": vocab, "eos_id": EOS}, "splits": {}}
    writer = ShardWriter(root / "train", "train", vocab, shard_tokens=shard_tokens)
    rng = np.random.default_rng(0)
    for _ in range(n_docs):
        writer.add_document(np.append(rng.integers(3, vocab, size=int(rng.integers(5, 30))), EOS))
    shards = writer.close()
    manifest["splits"]["train"] = {"docs": n_docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    write_manifest(root, manifest)
    return root


def _poke(path, position, value):
    """Overwrite one uint16 token in place (same size: only a scan or a checksum can tell)."""
    tokens = np.memmap(path, dtype="<u2", mode="r+")
    tokens[position] = value
    tokens.flush()
    del tokens


# ------------------------------------------------------------------------------------ point 5
def test_prepare_records_max_token_id_per_shard(tmp_path):
    make_dataset(tmp_path)
    for entry in read_manifest(tmp_path)["splits"]["train"]["shards"]:
        tokens = np.fromfile(tmp_path / "train" / entry["bin"], dtype="<u2")
        assert entry["max_token_id"] == int(tokens.max())
    assert TokenDataset(tmp_path).max_token_id == max(
        e["max_token_id"] for e in read_manifest(tmp_path)["splits"]["train"]["shards"])


def test_truncated_and_missing_shards_named_in_one_error(tmp_path):
    make_dataset(tmp_path)
    shards = sorted((tmp_path / "train").glob("*.bin"))
    assert len(shards) >= 3
    with open(shards[0], "r+b") as handle:
        handle.truncate(10)
    shards[1].with_suffix(".idx").unlink()
    with pytest.raises(ShardError) as err:
        TokenDataset(tmp_path)
    message = str(err.value)
    assert f"{shards[0]} is 10 bytes" in message and "truncated" in message
    assert f"{shards[1].with_suffix('.idx')} is missing" in message
    assert "re-run eurotron-prepare" in message


def test_out_of_range_id_named_with_shard_max_and_vocab(tmp_path):
    make_dataset(tmp_path)
    manifest = read_manifest(tmp_path)
    entry = manifest["splits"]["train"]["shards"][1]
    _poke(tmp_path / "train" / entry["bin"], 3, 777)
    # An older manifest (no max_token_id): the loader scans the shard once and stamps the result.
    for e in manifest["splits"]["train"]["shards"]:
        del e["max_token_id"]
    write_manifest(tmp_path, manifest)
    with pytest.raises(DataError, match=rf"{entry['bin']} holds token id 777.*vocabulary of {VOCAB}"):
        TokenDataset(tmp_path)


def test_recorded_max_is_range_checked_and_model_vocab_too(tmp_path):
    make_dataset(tmp_path)
    manifest = read_manifest(tmp_path)
    manifest["splits"]["train"]["shards"][0]["max_token_id"] = VOCAB + 5  # as if written by a bigger tokenizer
    write_manifest(tmp_path, manifest)
    with pytest.raises(DataError, match=f"holds token id {VOCAB + 5}"):
        TokenDataset(tmp_path)
    make_dataset(tmp_path / "ok")
    dataset = TokenDataset(tmp_path / "ok")
    dataset.check_vocab(VOCAB)
    with pytest.raises(DataError, match=rf"model.vocab_size=100 is too small.*token id {dataset.max_token_id}"):
        dataset.check_vocab(100)


def test_id_scan_is_stamped_by_size_and_mtime(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    manifest = read_manifest(tmp_path)
    for e in manifest["splits"]["train"]["shards"]:
        del e["max_token_id"]
    write_manifest(tmp_path, manifest)
    scans = []
    real_scan = integrity._scan_max
    monkeypatch.setattr(integrity, "_scan_max", lambda tokens: scans.append(1) or real_scan(tokens))
    TokenDataset(tmp_path)
    first = len(scans)
    assert first == len(manifest["splits"]["train"]["shards"])
    TokenDataset(tmp_path)
    assert len(scans) == first  # cached
    bin_file = tmp_path / "train" / manifest["splits"]["train"]["shards"][0]["bin"]
    _poke(bin_file, 0, 900)
    os.utime(bin_file, ns=(1, 1))  # a changed mtime invalidates the stamp
    with pytest.raises(DataError, match="holds token id 900"):
        TokenDataset(tmp_path)


def test_verify_checksums_hashes_once_and_catches_same_size_corruption(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from eurotron.config import DataConfig

    make_dataset(tmp_path)
    data = OmegaConf.structured(DataConfig(path=str(tmp_path)))
    assert data.verify_checksums is False
    hashed = []
    real = integrity._sha256
    monkeypatch.setattr(integrity, "_sha256", lambda p: hashed.append(p) or real(p))
    open_train_dataset(data)
    assert hashed == []  # off by default
    data.verify_checksums = True
    open_train_dataset(data)
    count = len(hashed)
    assert count > 0
    open_train_dataset(data)
    assert len(hashed) == count  # the stamp says these files passed
    bin_file = tmp_path / "train" / "train_00001.bin"
    _poke(bin_file, 2, 7)
    os.utime(bin_file, ns=(5, 5))
    with pytest.raises(ShardError, match=r"train_00001.bin does not match its manifest checksum"):
        open_train_dataset(data)


def test_read_only_dataset_stamps_in_user_cache(tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity.os, "access", lambda path, mode: False)  # as a read-only shared copy
    TokenDataset(tmp_path / "ds", verify=True)
    assert not (tmp_path / "ds" / integrity.STAMP_DIR).exists()
    assert list((tmp_path / "cache" / "eurotron" / "stamps").rglob("*.json"))


def test_writer_refuses_ids_outside_the_vocabulary(tmp_path):
    writer = ShardWriter(tmp_path, "train", 300)
    writer.add_documents(np.array([5, 299, 2, 301, 2], dtype=np.uint16), [3, 2])
    with pytest.raises(ShardError, match="token id 301 is outside"):
        writer.close()


# ------------------------------------------------------------------------ point 7: eurotron-prepare
def _prepare(tmp_path, path, **kwargs):
    from eurotron.config import PrepareConfig, SourceConfig, TokenizerConfig
    from eurotron.data.prepare import prepare

    cfg = PrepareConfig(source=SourceConfig(type="jsonl", path=str(path)), tokenizer=TokenizerConfig(vocab_size=300),
                        output_dir=str(tmp_path / "out"), **kwargs)
    return prepare(cfg, progress=False)


TEXTS = ["Die Bibliothek öffnet um neun Uhr. " * 3, "La bibliothèque ouvre à neuf heures. " * 3,
         "The library opens at nine o'clock. " * 3] * 20


def test_all_garbage_input_blames_the_bad_records(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n[1, 2]x\n{\"title\": \"no text\"}\n{broken\n")
    with pytest.raises(DataError) as err:
        _prepare(tmp_path, bad, bad_records="skip")
    message = str(err.value)
    assert "every document is empty" not in message
    assert "3 malformed_json" in message and "1 missing_text" in message
    assert f"{bad}:1 (malformed_json)" in message
    # A tokenizer given: pass 2 alone, same diagnosis.
    with pytest.raises(DataError, match="of its 4 records, 3 malformed_json"):
        _prepare_with_tokenizer(tmp_path, bad)


def _prepare_with_tokenizer(tmp_path, path):
    from eurotron.config import PrepareConfig, SourceConfig, TokenizerConfig
    from eurotron.data.prepare import prepare

    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    if not (tmp_path / "tok").exists():
        _prepare(tmp_path, good)
        os.rename(tmp_path / "out", tmp_path / "tok")
    cfg = PrepareConfig(source=SourceConfig(type="jsonl", path=str(path)), bad_records="skip",
                        tokenizer=TokenizerConfig(path=str(tmp_path / "tok" / "tokenizer")),
                        output_dir=str(tmp_path / "out2"))
    return prepare(cfg, progress=False)


def test_empty_file_says_so(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="holds no records"):
        _prepare(tmp_path, empty)


@pytest.mark.parametrize("layout", ["array", "pretty_array", "object", "jsonl"])
def test_json_file_as_array_object_or_jsonl(tmp_path, layout):
    from eurotron.config import SourceConfig
    from eurotron.data.readers import iter_documents

    docs = [{"text": t, "id": i} for i, t in enumerate(TEXTS[:5])]
    file = tmp_path / "docs.json"
    if layout == "array":
        file.write_text(json.dumps(docs))
    elif layout == "pretty_array":
        file.write_text("\n" + json.dumps(docs, indent=2))
    elif layout == "object":
        docs = docs[:1]
        file.write_text(json.dumps(docs[0], indent=2))
    else:
        file.write_text("".join(json.dumps(d) + "\n" for d in docs))
    read = list(iter_documents(SourceConfig(type="jsonl", path=str(file))))
    assert [(d["text"], d["id"]) for d in read] == [(d["text"], d["id"]) for d in docs]


def test_json_array_items_are_classified_and_broken_array_is_named(tmp_path):
    file = tmp_path / "docs.json"
    file.write_text(json.dumps([{"text": TEXTS[0]}, 5, {"body": "x"}] + [{"text": t} for t in TEXTS]))
    manifest = _prepare(tmp_path, file, bad_records="skip")
    assert manifest["documents"]["skipped"]["not_an_object"] == 1
    assert manifest["documents"]["skipped"]["missing_text"] == 1
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "a"},\n {"text": "b"')
    with pytest.raises(DataError, match=r"broken.json: read as one JSON value.*not valid JSON.*line 2.*JSONL"):
        _prepare(tmp_path, broken, overwrite=True)


def test_source_path_glob(tmp_path):
    from eurotron.config import SourceConfig
    from eurotron.data.readers import iter_documents

    for i in range(3):
        (tmp_path / f"part{i}.jsonl").write_text(json.dumps({"text": f"doc {i}"}) + "\n")
    (tmp_path / "other.txt").write_text("ignored")
    read = list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "part*.jsonl"))))
    assert [d["text"] for d in read] == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(DataError, match="the pattern matches no file"):
        list(iter_documents(SourceConfig(type="jsonl", path=str(tmp_path / "nothing*.jsonl"))))


# ---------------------------------------------------------------- point 7: eurotron-generate / convert
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with one complete checkpoint of a tiny llama and a real tokenizer."""
    from convert_support import random_eurotron_model, run_config_yaml, save_eurotron_checkpoint, small_config

    root = tmp_path_factory.mktemp("gen")
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    _prepare(root, good)
    cfg = small_config("llama")
    run = root / "run"
    save_eurotron_checkpoint(random_eurotron_model(cfg), run / "checkpoints" / "step_00000001",
                             run_config_yaml(cfg, data={"path": str(root / "out")}), root / "out" / "tokenizer",
                             {"step": 1, "tokens_seen": 8})
    (run / "checkpoints" / "latest").write_text("step_00000001\n")
    return run


def _main_exit(main, argv, capsys):
    """Run a CLI's main(argv) in-process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_generate_honours_explicit_zero_and_empty_prompt(run_dir, capsys):
    from eurotron.cli.generate import main, parse_args, run

    outputs = run(parse_args([str(run_dir), "--prompt", "Die", "--max-new-tokens", "0"]))
    assert outputs == [""]  # 0 means no new token, not the run's default of 40
    outputs = run(parse_args([str(run_dir), "--prompt", "", "--max-new-tokens", "3"]))
    assert len(outputs) == 1  # an empty prompt starts a new document (after EOS)
    greedy = run(parse_args([str(run_dir), "--prompt", "Die", "--max-new-tokens", "4", "--temperature", "0"]))
    assert greedy == run(parse_args([str(run_dir), "--prompt", "Die", "--max-new-tokens", "4"]))


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "top_p", "--temperature", "0"], "--temperature=0.0: top_p sampling needs a finite temperature > 0; "
                                                    "for the most likely token every step use --strategy greedy"),
    (["--max-new-tokens", "-5"], "--max-new-tokens=-5: must be >= 0"),
    (["--temperature", "-1"], "--temperature=-1.0: must be >= 0"),
    (["--strategy", "top_p", "--top-p", "0"], "--top-p=0.0: must lie in (0, 1]"),
    (["--repetition-penalty", "0"], "--repetition-penalty=0.0: must be a finite number > 0"),
    (["--seed", "-3"], "--seed=-3: must be >= 0"),
])
def test_generate_refuses_bad_settings(run_dir, capsys, argv, message):
    from eurotron.cli.generate import main

    code, err = _main_exit(main, [str(run_dir), "--prompt", "x", *argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_generate_refuses_bad_checkpoint_paths(run_dir, tmp_path, capsys):
    import shutil

    from eurotron.cli.generate import main

    step = run_dir / "checkpoints" / "step_00000001"
    half = tmp_path / ".tmp_step_00000002"
    shutil.copytree(step, half)
    incomplete = tmp_path / "step_00000003"
    shutil.copytree(step, incomplete)
    (incomplete / "config.yaml").unlink()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, message in [(half, "is a half-written checkpoint"),
                          (incomplete, "is an incomplete checkpoint (missing config.yaml)"),
                          (text, "is a file, not a checkpoint directory"),
                          (tmp_path / "nope", "no such directory")]:
        code, err = _main_exit(main, [str(path)], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err


def test_to_hf_refuses_to_drop_a_trained_lm_head(tmp_path, capsys):
    from convert_support import random_eurotron_model, run_config_yaml, save_eurotron_checkpoint, small_config
    from eurotron.cli.convert import main

    untied = small_config("llama")  # trained untied, then config.yaml edited to say tied
    config = run_config_yaml(untied).replace("tie_embeddings: false", "tie_embeddings: true")
    assert "tie_embeddings: true" in config
    step = save_eurotron_checkpoint(random_eurotron_model(untied), tmp_path / "step_00000001", config, None, {})
    code, err = _main_exit(main, ["to-hf", str(step), str(tmp_path / "hf"), "--no-progress"], capsys)
    assert code == 2 and "tie_embeddings: true, but the checkpoint's output.weight" in err
    assert "Set model.tie_embeddings: false" in err and not (tmp_path / "hf").exists()


def test_to_hf_config_untied_without_output_weight(tmp_path, capsys):
    import torch.distributed.checkpoint as dcp

    from convert_support import random_eurotron_model, run_config_yaml, small_config
    from eurotron.cli.convert import main

    cfg = small_config("llama")
    state = {k: v for k, v in random_eurotron_model(cfg).state_dict().items() if k != "output.weight"}
    step = tmp_path / "step_00000001"
    step.mkdir()
    dcp.save({"model": state}, checkpoint_id=str(step / "model_optim"))
    (step / "config.yaml").write_text(run_config_yaml(cfg))
    (step / "trainer.json").write_text("{}")
    code, err = _main_exit(main, ["to-hf", str(step), str(tmp_path / "hf"), "--no-progress"], capsys)
    assert code == 2 and "tie_embeddings: false, but the checkpoint" in err and "holds no output.weight" in err


# ------------------------------------------------------------- point 7: more bad inputs, other CLIs
def test_prepare_tokenizer_path_that_is_no_model(tmp_path):
    from eurotron.config import PrepareConfig, SourceConfig, TokenizerConfig
    from eurotron.data.prepare import prepare

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": TEXTS[0]}) + "\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    cfg = PrepareConfig(source=SourceConfig(type="jsonl", path=str(good)), tokenizer=TokenizerConfig(path=str(notes)),
                        output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match="notes.txt is not a SentencePiece model"):
        prepare(cfg, progress=False)
    # A bad setting found before any record is read is reported as such, not as "no records".
    cfg = PrepareConfig(source=SourceConfig(type="jsonl", path=str(good)), tokenizer=TokenizerConfig(vocab_size=-3),
                        output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match="tokenizer.vocab_size=-3: must be at least 300"):
        prepare(cfg, progress=False)


def test_optout_fetch_refuses_negative_numbers(tmp_path, capsys):
    from eurotron.cli.optout import main

    code, err = _main_exit(main, ["fetch", "--out", str(tmp_path / "s"), "--concurrency", "-1", "--delay", "-2",
                                  "--timeout", "0", "a.eu"], capsys)
    assert code == 2 and "--concurrency -1: must be >= 1" in err and "--delay -2.0" in err and "--timeout 0.0" in err
    assert not (tmp_path / "s").exists()


def test_memorization_documents_dir_and_out_file(tmp_path, capsys):
    from eurotron.cli.memorization import main

    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    code, err = _main_exit(main, [str(tmp_path), "--documents", str(docs_dir)], capsys)
    assert code == 2 and "is a directory; give a JSONL file" in err
    docs = tmp_path / "d.jsonl"
    docs.write_text(json.dumps({"text": "x"}) + "\n")
    out = tmp_path / "out.txt"
    out.write_text("")
    code, err = _main_exit(main, [str(tmp_path), "--documents", str(docs), "--out", str(out)], capsys)
    assert code == 2 and "--out" in err and "is a file" in err


def test_cli_user_errors_print_no_traceback(tmp_path, bin_dir):
    """The no-traceback property itself, through the installed console scripts."""
    import subprocess

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2, 3]")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for argv, message in [
        ([bin_dir / "eurotron-prepare", "source.type=jsonl", f"source.path={bad}", "bad_records=skip",
          f"output_dir={tmp_path / 'o'}"], "3 not_an_object"),
        ([bin_dir / "eurotron-generate", str(notes)], "is a file, not a checkpoint directory"),
    ]:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_memorization_decoding_never_picks_ids_beyond_the_tokenizer():
    """A model vocabulary padded beyond the tokenizer's: those ids cannot be decoded, so greedy skips them."""
    import torch

    from eurotron.audit.memorization import greedy_decode

    def logits_favouring_padding(ids, valid):
        out = torch.zeros(ids.shape[0], 12)
        out[:, 11] = 5.0  # a padded id (the tokenizer has 10)
        out[:, 3] = 1.0
        return out

    assert greedy_decode(logits_favouring_padding, [[1, 2]], 2, pad_id=0) == [[11, 11]]
    assert greedy_decode(logits_favouring_padding, [[1, 2]], 2, pad_id=0, vocab_limit=10) == [[3, 3]]


@pytest.mark.parametrize("override,expected", [
    ("filters.dedup.num_perm=0", "filters.dedup.num_perm=0: must be >= 2"),
    ("filters.dedup.shingle_words=0", "filters.dedup.shingle_words=0: must be >= 1"),
])
def test_dedup_settings_out_of_range_are_named(tmp_path, override, expected):
    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    with pytest.raises(DataError) as err:
        prepare(compose_prepare([f"output_dir={tmp_path}/out", override]))
    assert expected in str(err.value)
