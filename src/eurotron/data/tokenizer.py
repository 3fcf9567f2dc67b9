"""Tokenizers: a SentencePiece model trained on the corpus, or an existing Hugging Face tokenizer.

A saved tokenizer directory serves two readers:

* eurotron (`Tokenizer.load`), through ``eurotron_tokenizer.json`` (which kind, special ids);
* transformers (`AutoTokenizer.from_pretrained(dir)`), through ``tokenizer.json`` and
  ``tokenizer_config.json``. For a SentencePiece tokenizer, ``tokenizer.json`` is built from the
  ``.model`` file so that both produce the same ids for the same text (no BOS/EOS added by either).

Trained SentencePiece models follow Llama's conventions: ids 0..3 are ``<unk> <s> </s> <pad>``,
byte fallback (no text is ever unknown), digits split, identity normalisation, a dummy prefix space.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from .errors import DataError

META_FILE = "eurotron_tokenizer.json"
SP_MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
SPECIALS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
SP_MODEL_TYPES = ("bpe", "unigram")
# SentencePiece skips training sentences longer than its max_sentence_length (bytes); documents
# are cut into pieces of at most this many characters (4 bytes each at worst) before training.
_TRAIN_PIECE_CHARS = 4000
_TRAIN_MAX_SENTENCE_BYTES = 4 * _TRAIN_PIECE_CHARS + 16


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, Slurm)
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


class Tokenizer:
    """Text ⇄ token ids, the same whichever kind is underneath.

    `encode` adds no special tokens: documents are separated by EOS when shards are written.
    """

    def __init__(self, kind: str, backend: Any) -> None:
        self.kind = kind
        self._backend = backend
        # Characters the tokenizer was trained on (set by train_sentencepiece).
        self.training_chars: Optional[int] = None
        if kind == "sentencepiece":
            self.vocab_size = int(backend.get_piece_size())
            self.bos_id = int(backend.bos_id())
            self.eos_id = int(backend.eos_id())
            self.pad_id = int(backend.pad_id())
            self.unk_id = int(backend.unk_id())
        elif kind == "hf":
            self.vocab_size = len(backend)
            self.bos_id = _id_or_minus_one(backend.bos_token_id)
            self.eos_id = _id_or_minus_one(backend.eos_token_id)
            self.pad_id = _id_or_minus_one(backend.pad_token_id)
            self.unk_id = _id_or_minus_one(backend.unk_token_id)
        else:
            raise DataError(f"unknown tokenizer kind {kind!r}; expected sentencepiece or hf")
        if self.eos_id < 0:
            raise DataError(
                "the tokenizer has no EOS token, which eurotron needs to separate documents; "
                "use a tokenizer with an eos_token (tokenizer.type=sentencepiece trains one)"
            )

    # ----------------------------------------------------------------------------------- encode
    def encode(self, text: str) -> List[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str], num_threads: Optional[int] = None) -> List[List[int]]:
        """Token ids of each text; `num_threads` caps SentencePiece's threads (default: the cores
        this process may use, at most 16)."""
        texts = list(texts)
        if not texts:
            return []
        if self.kind == "sentencepiece":
            return self._backend.encode(texts, out_type=int, num_threads=num_threads or _threads())
        # split_special_tokens: a document that contains the text "</s>" must not produce EOS.
        out = self._backend(texts, add_special_tokens=False, split_special_tokens=True,
                            return_attention_mask=False, return_token_type_ids=False)
        return out["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "sentencepiece":
            return self._backend.decode(ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    # ------------------------------------------------------------------------------- save/load
    def save(self, directory: Path | str) -> Path:
        """Write a directory `Tokenizer.load` and `transformers.AutoTokenizer` both read."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "sentencepiece":
            model_path = out / SP_MODEL_FILE
            model_path.write_bytes(self._backend.serialized_model_proto())
            write_hf_files(model_path, out)
        else:
            self._backend.save_pretrained(str(out))
        meta = {"kind": self.kind, **self.special_ids()}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: Path | str) -> "Tokenizer":
        """Open a directory written by `save`, a bare SentencePiece `tokenizer.model` directory,
        or any Hugging Face tokenizer directory."""
        path = Path(directory)
        if not path.is_dir():
            raise DataError(f"tokenizer directory {path} does not exist")
        kind = None
        if (path / META_FILE).is_file():
            kind = json.loads((path / META_FILE).read_text())["kind"]
        elif (path / SP_MODEL_FILE).is_file() and not (path / HF_TOKENIZER_FILE).is_file():
            kind = "sentencepiece"
        if kind == "sentencepiece":
            return cls.from_sentencepiece(path / SP_MODEL_FILE)
        return cls.from_hf(path)

    @classmethod
    def from_sentencepiece(cls, model_file: Path | str) -> "Tokenizer":
        import sentencepiece as spm

        if not Path(model_file).is_file():
            raise DataError(f"SentencePiece model {model_file} does not exist")
        try:
            processor = spm.SentencePieceProcessor(model_file=str(model_file))
        except (RuntimeError, OSError) as err:
            raise DataError(
                f"{model_file} is not a SentencePiece model ({str(err).strip()}); tokenizer.path must be a "
                f"tokenizer.model file or a directory written by eurotron-prepare"
            ) from None
        return cls("sentencepiece", processor)

    @classmethod
    def from_hf(cls, directory: Path | str) -> "Tokenizer":
        from transformers import AutoTokenizer

        try:
            backend = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as err:
            raise DataError(
                f"cannot load a Hugging Face tokenizer from {directory} ({err}); tokenizer.path must be "
                f"a local directory with tokenizer files (tokenizer.json / tokenizer.model + config)"
            ) from err
        return cls("hf", backend)

    # ------------------------------------------------------------------------------------ info
    def special_ids(self) -> Dict[str, int]:
        return {"vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "unk_id": self.unk_id}

    def tokenizer_info(self, saved_dir: Optional[Path | str] = None) -> Dict[str, Any]:
        """What the manifest records: kind, sizes, special ids and a checksum of the model file."""
        info: Dict[str, Any] = {"type": self.kind, **self.special_ids()}
        if self.kind == "sentencepiece":
            info["model_file"] = SP_MODEL_FILE
            info["sha256"] = hashlib.sha256(self._backend.serialized_model_proto()).hexdigest()
        else:
            info["name_or_path"] = str(getattr(self._backend, "name_or_path", ""))
            info["class"] = type(self._backend).__name__
            if saved_dir is not None and (Path(saved_dir) / HF_TOKENIZER_FILE).is_file():
                info["model_file"] = HF_TOKENIZER_FILE
                info["sha256"] = sha256_file(Path(saved_dir) / HF_TOKENIZER_FILE)
        return info


def _id_or_minus_one(value: Optional[int]) -> int:
    return -1 if value is None else int(value)


# ------------------------------------------------------------------------------------ training
def _training_pieces(texts: Iterable[str], max_chars: int, counter: Dict[str, int]) -> Iterator[str]:
    """Lines of the texts, long ones cut at spaces, until `max_chars` characters have been given."""
    given = 0
    for text in texts:
        for line in text.splitlines():
            while line:
                if len(line) <= _TRAIN_PIECE_CHARS:
                    piece, line = line, ""
                else:
                    cut = line.rfind(" ", 0, _TRAIN_PIECE_CHARS)
                    cut = cut if cut > 0 else _TRAIN_PIECE_CHARS
                    piece, line = line[:cut], line[cut:]
                if not piece.strip():
                    continue
                if given + len(piece) > max_chars:
                    counter["chars"] = given
                    return
                given += len(piece)
                counter["sentences"] = counter.get("sentences", 0) + 1
                yield piece
    counter["chars"] = given


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: Path | str,
    vocab_size: int,
    model_type: str = "bpe",
    max_training_chars: int = 50_000_000,
) -> Tokenizer:
    """Train a SentencePiece model on `texts` (streamed, at most `max_training_chars` characters),
    save it to `out_dir` (see the module docstring) and return it."""
    import sentencepiece as spm

    if model_type not in SP_MODEL_TYPES:
        raise DataError(f"tokenizer.model_type={model_type!r}: must be one of {', '.join(SP_MODEL_TYPES)}")
    if vocab_size < 300:
        raise DataError(
            f"tokenizer.vocab_size={vocab_size}: must be at least 300 (256 byte-fallback pieces and "
            f"4 special tokens come first)"
        )
    if max_training_chars <= 0:
        raise DataError(f"tokenizer.max_training_chars={max_training_chars}: must be positive")
    counter: Dict[str, int] = {}
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_pieces(texts, max_training_chars, counter),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            split_digits=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            unk_piece=SPECIALS["unk"], bos_piece=SPECIALS["bos"],
            eos_piece=SPECIALS["eos"], pad_piece=SPECIALS["pad"],
            max_sentence_length=_TRAIN_MAX_SENTENCE_BYTES,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=_threads(),
            minloglevel=2,
        )
    except RuntimeError as err:
        if counter.get("sentences", 0) == 0:
            raise DataError(
                f"no text to train the tokenizer on: every document is empty, or "
                f"tokenizer.max_training_chars={max_training_chars} is smaller than the first line"
            ) from err
        message = str(err).rstrip(". ")
        if "Vocabulary size too high" in message:
            message += "; the corpus is too small for this vocabulary: lower tokenizer.vocab_size"
        elif "smaller than required_chars" in message:
            message += "; the corpus has more distinct characters than this vocabulary: raise tokenizer.vocab_size"
        raise DataError(
            f"SentencePiece training failed on {counter.get('chars', 0):,} characters "
            f"(tokenizer.vocab_size={vocab_size}, tokenizer.model_type={model_type}): {message}"
        ) from err
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokenizer = Tokenizer("sentencepiece", processor)
    tokenizer.training_chars = counter.get("chars", 0)
    tokenizer.save(out_dir)
    return tokenizer


# ---------------------------------------------------------------------- transformers' files (SP)
def _bpe_merges(pieces: Sequence[str], scores: Sequence[float], normal: Sequence[bool]) -> List[tuple]:
    """BPE merges that rebuild SentencePiece's pieces in its own priority order (higher score first)."""
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = []
    for i, piece in enumerate(pieces):
        if not normal[i] or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and normal[vocab[left]] and normal[vocab[right]]:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def build_hf_tokenizer(model_file: Path | str):
    """A `tokenizers.Tokenizer` that gives the ids the SentencePiece model gives.

    Exact for BPE models. For unigram models, `tokenizers` can match the literal text of a control
    or byte piece (e.g. "<s>", "<0x41>") where SentencePiece would not; all other text agrees.
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer as FastTokenizer, decoders
    from tokenizers.models import BPE, Unigram

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    size = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(size)]
    scores = [sp.get_score(i) for i in range(size)]
    special = [sp.is_control(i) or sp.is_unknown(i) for i in range(size)]
    byte = [sp.is_byte(i) for i in range(size)]
    normal = [not (s or b) for s, b in zip(special, byte)]
    unk_piece = sp.id_to_piece(sp.unk_id())
    proto = _model_proto(model_file)
    if proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM:
        model = Unigram(list(zip(pieces, scores)), unk_id=sp.unk_id(), byte_fallback=True)
    else:
        model = BPE({p: i for i, p in enumerate(pieces)}, _bpe_merges(pieces, scores, normal),
                    unk_token=unk_piece, fuse_unk=True, byte_fallback=True, dropout=None)
    fast = FastTokenizer(model)
    fast.normalizer = _normalizer(proto.normalizer_spec)
    fast.pre_tokenizer = None  # SentencePiece never splits text before its model sees it
    fast.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast.add_special_tokens(
        [AddedToken(pieces[i], special=True, normalized=False) for i in range(size) if special[i]]
    )
    return fast


def _model_proto(model_file: Path | str):
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def _normalizer(spec):
    """SentencePiece's normalisation steps, in its order. Models trained by eurotron use identity
    rules and no whitespace squeezing, so only the dummy prefix and "▁" for spaces remain (and a
    dummy prefix is added even before a leading space, as SentencePiece does)."""
    from tokenizers import Regex, normalizers

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def write_hf_files(model_file: Path | str, out_dir: Path | str) -> None:
    """Write tokenizer.json + tokenizer_config.json for `AutoTokenizer.from_pretrained(out_dir)`."""
    from transformers import PreTrainedTokenizerFast

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    names = {key: sp.id_to_piece(getattr(sp, f"{key}_id")()) for key in SPECIALS
             if getattr(sp, f"{key}_id")() >= 0}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=build_hf_tokenizer(model_file),
        **{f"{key}_token": name for key, name in names.items()},
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(str(out_dir))
    # The generic fast class reads tokenizer.json as written: no class-specific rebuilding of the
    # pipeline (which would change how leading spaces are handled), and no BOS/EOS added.
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                   "add_eos_token": False, "model_max_length": 1_000_000_000})
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
