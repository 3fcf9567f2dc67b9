"""Memorisation audit: can a model reproduce the end of its training documents verbatim?

The extraction protocol of the Goldfish paper's code: a document's last ``suffix_tokens`` tokens
(default 50) are the suffix, every token before them is the prompt; the model greedily decodes
``suffix_tokens`` new tokens, which are compared with the true suffix:

* exact match: all suffix tokens reproduced;
* token accuracy: fraction of suffix positions whose generated token is the true one;
* Rouge-L: F1 of the longest common subsequence of generated and true suffix tokens.

Works with a eurotron checkpoint (run dir, checkpoints/ or step dir) or a Hugging Face model
directory (``transformers.AutoModelForCausalLM``, local files only).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import UserError

# (input ids [B, T], valid [B, T] bool, True where a real token) → next-token logits [B, vocab]
NextTokenFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AuditError(UserError, ValueError):
    """Bad audit input: a missing file, a document file without text, an unusable model directory."""


# ------------------------------------------------------------------------------------------ metrics
def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[int], reference: Sequence[int]) -> Dict[str, float]:
    """Rouge-L over tokens: LCS precision, recall and F1 (beta = 1)."""
    lcs = lcs_length(candidate, reference)
    precision = lcs / len(candidate) if candidate else 0.0
    recall = lcs / len(reference) if reference else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def token_accuracy(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """Fraction of reference positions where the candidate has the same token (missing = wrong)."""
    if not reference:
        return 0.0
    return sum(1 for c, r in zip(candidate, reference) if c == r) / len(reference)


# --------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def greedy_decode(next_token_logits: NextTokenFn, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  pad_id: int, batch_size: int = 16, device: str | torch.device = "cpu",
                  vocab_limit: Optional[int] = None) -> List[List[int]]:
    """Greedy continuations of `prompts` (each exactly `max_new_tokens` long), batched with left
    padding; prompts of similar length share a batch. Ids at or above `vocab_limit` (a model vocabulary
    padded beyond its tokenizer's) are never chosen: the tokenizer could not decode them."""
    if batch_size < 1:
        raise AuditError(f"batch_size={batch_size}: must be >= 1")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: List[List[int]] = [[] for _ in prompts]
    for at in range(0, len(order), batch_size):
        chosen = order[at:at + batch_size]
        width = max(len(prompts[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        valid = torch.zeros((len(chosen), width), dtype=torch.bool)
        for row, i in enumerate(chosen):
            prompt = list(prompts[i])
            if not prompt:
                raise AuditError(f"prompt {i} is empty")
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            valid[row, width - len(prompt):] = True
        ids, valid = ids.to(device), valid.to(device)
        new = []
        for _ in range(max_new_tokens):
            logits = next_token_logits(ids, valid)
            if vocab_limit is not None and vocab_limit < logits.shape[-1]:
                logits[..., vocab_limit:] = float("-inf")
            token = logits.argmax(dim=-1, keepdim=True)
            new.append(token)
            ids = torch.cat([ids, token], dim=1)
            valid = torch.cat([valid, torch.ones_like(token, dtype=torch.bool)], dim=1)
        generated = torch.cat(new, dim=1).tolist() if new else [[] for _ in chosen]
        for row, i in enumerate(chosen):
            results[i] = generated[row]
    return results


def eurotron_next_token_fn(model: torch.nn.Module, document_masking: bool) -> NextTokenFn:
    """Left padding as a document of its own: positions restart at 0 where the prompt begins, so
    with document masking the prompt never attends to the padding (and uses the positions it was
    trained with: a document starts at position 0)."""

    def fn(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if not document_masking and not bool(valid.all()):
            raise AuditError("this model has no document masking; decode with batch_size=1")
        steps = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        pad = (~valid).sum(dim=1, keepdim=True)
        positions = torch.where(valid, steps - pad, steps)
        return model(ids, positions)[:, -1, :].float()

    return fn


def hf_next_token_fn(model: torch.nn.Module) -> NextTokenFn:
    def fn(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=valid.long(), position_ids=positions, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    return fn


# ------------------------------------------------------------------------------------------ models
@dataclass
class AuditModel:
    next_token_logits: NextTokenFn
    tokenizer: Any  # eurotron.data.tokenizer.Tokenizer
    max_len: int
    kind: str  # eurotron | hf
    source: str
    # Largest batch the model can decode with left padding (1 when it cannot mask padding).
    max_batch_size: int = 1 << 30
    device: str = "cpu"


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def is_hf_model_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


def load_audit_model(path: Path | str, device: str = "cpu", tokenizer_path: Optional[Path | str] = None) -> AuditModel:
    """A eurotron checkpoint (run dir, checkpoints/ or step dir) or a Hugging Face model directory."""
    from ..data.tokenizer import Tokenizer

    path = Path(path)
    device = _resolve_device(device)
    if not path.exists():
        raise AuditError(f"{path} does not exist: pass a eurotron run/checkpoint directory or an HF model directory")
    if is_hf_model_dir(path):
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise AuditError(f"cannot load a Hugging Face model from {path}: {err}") from err
        model.to(device).eval()
        tokenizer = Tokenizer.load(tokenizer_path or path)
        max_len = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        return AuditModel(hf_next_token_fn(model), tokenizer, max_len, "hf", str(path), device=device)

    from ..generation import load_model_from_checkpoint

    model, cfg, ckpt = load_model_from_checkpoint(path, device=device)
    tokenizer = Tokenizer.load(tokenizer_path or ckpt / "tokenizer")
    return AuditModel(eurotron_next_token_fn(model, cfg.model.document_masking), tokenizer, cfg.model.max_seq_len,
                      "eurotron", str(ckpt), max_batch_size=1 << 30 if cfg.model.document_masking else 1,
                      device=device)


# --------------------------------------------------------------------------------------- documents
def read_documents(path: Path | str, text_field: str = "text", limit: int = 0) -> List[Dict[str, Any]]:
    """Records of a JSONL file (one JSON object per line, with `text_field`)."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"documents file {path} does not exist")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AuditError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise AuditError(f"{path}:{number}: expected an object with a string field {text_field!r}")
            records.append(record)
            if limit and len(records) >= limit:
                break
    if not records:
        raise AuditError(f"{path} holds no documents")
    return records


# ------------------------------------------------------------------------------------------- audit
@dataclass
class DocumentResult:
    index: int
    id: Optional[str]
    prompt_tokens: int
    suffix_tokens: int
    exact_match: bool
    token_accuracy: float
    rouge_l: float
    generated: str
    reference: str


@dataclass
class AuditReport:
    source: str
    kind: str
    suffix_tokens: int
    results: List[DocumentResult] = field(default_factory=list)
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    documents_file: Optional[str] = None

    @property
    def aggregate(self) -> Dict[str, Any]:
        n = len(self.results)
        exact = sum(r.exact_match for r in self.results)
        return {
            "documents": n,
            "skipped": len(self.skipped),
            "exact_matches": exact,
            "exact_match_rate": exact / n if n else 0.0,
            "token_accuracy": _mean([r.token_accuracy for r in self.results]),
            "rouge_l": _mean([r.rouge_l for r in self.results]),
        }

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.source, "kind": self.kind, "documents_file": self.documents_file,
                "suffix_tokens": self.suffix_tokens, "aggregate": self.aggregate,
                "per_document": [asdict(r) for r in self.results], "skipped": self.skipped}

    def to_markdown(self, per_document: bool = True) -> str:
        a = self.aggregate
        lines = [
            "# Memorisation audit",
            "",
            f"Model: `{self.source}` ({self.kind}); documents: `{self.documents_file}`; "
            f"suffix: last {self.suffix_tokens} tokens, greedy decoding.",
            "",
            "| documents | skipped | exact match | token accuracy | Rouge-L |",
            "|---:|---:|---:|---:|---:|",
            f"| {a['documents']} | {a['skipped']} | {a['exact_matches']}/{a['documents']} "
            f"({a['exact_match_rate']:.1%}) | {a['token_accuracy']:.3f} | {a['rouge_l']:.3f} |",
        ]
        if per_document and self.results:
            lines += ["", "| # | id | prompt tokens | exact | token acc. | Rouge-L |", "|---:|---|---:|:---:|---:|---:|"]
            for r in self.results:
                ident = (r.id or "").replace("|", "\\|")
                lines.append(f"| {r.index} | {ident} | {r.prompt_tokens} | {'yes' if r.exact_match else 'no'} | "
                             f"{r.token_accuracy:.3f} | {r.rouge_l:.3f} |")
        if self.skipped:
            lines += ["", f"Skipped {len(self.skipped)} document(s) shorter than the suffix plus the minimum prompt."]
        return "\n".join(lines) + "\n"


def _mean(values: List[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _document_id(record: Dict[str, Any], index: int) -> str:
    for key in ("id", "url", "title"):
        if record.get(key) not in (None, ""):
            return str(record[key])
    return str(index)


def audit_token_documents(model: AuditModel, documents: Sequence[Sequence[int]], suffix_tokens: int = 50,
                          min_prompt_tokens: int = 1, batch_size: int = 16, ids: Optional[Sequence[str]] = None,
                          bos: bool = False) -> AuditReport:
    """Audit already-tokenized documents (no EOS at the end)."""
    if suffix_tokens < 1:
        raise AuditError(f"suffix_tokens={suffix_tokens}: must be >= 1")
    if min_prompt_tokens < 1:
        raise AuditError(f"min_prompt_tokens={min_prompt_tokens}: must be >= 1")
    if suffix_tokens + 1 > model.max_len:
        raise AuditError(f"suffix_tokens={suffix_tokens} leaves no room for a prompt in the model's "
                         f"{model.max_len}-token context")
    report = AuditReport(model.source, model.kind, suffix_tokens)
    prompts, suffixes, kept = [], [], []
    for index, tokens in enumerate(documents):
        tokens = list(tokens)
        if len(tokens) < suffix_tokens + min_prompt_tokens:
            report.skipped.append({"index": index, "id": ids[index] if ids else str(index), "tokens": len(tokens)})
            continue
        prompt = tokens[:-suffix_tokens]
        if bos and model.tokenizer.bos_id >= 0:
            prompt = [model.tokenizer.bos_id] + prompt
        # Keep the whole context inside the model's window: the prompt's most recent tokens.
        prompt = prompt[-(model.max_len - suffix_tokens):]
        prompts.append(prompt)
        suffixes.append(tokens[-suffix_tokens:])
        kept.append(index)
    pad_id = model.tokenizer.pad_id if model.tokenizer.pad_id >= 0 else model.tokenizer.eos_id
    generated = greedy_decode(model.next_token_logits, prompts, suffix_tokens, pad_id,
                              batch_size=min(batch_size, model.max_batch_size), device=model.device,
                              vocab_limit=model.tokenizer.vocab_size)
    eos = model.tokenizer.eos_id
    for index, prompt, suffix, gen in zip(kept, prompts, suffixes, generated):
        if eos in gen:  # the model ended the document: what follows is not part of it
            gen = gen[:gen.index(eos)]
        report.results.append(DocumentResult(
            index=index,
            id=ids[index] if ids else str(index),
            prompt_tokens=len(prompt),
            suffix_tokens=len(suffix),
            exact_match=gen == suffix,
            token_accuracy=token_accuracy(gen, suffix),
            rouge_l=rouge_l(gen, suffix)["f1"],
            generated=model.tokenizer.decode(gen),
            reference=model.tokenizer.decode(suffix),
        ))
    return report


def audit_documents(model: AuditModel, records: Sequence[Dict[str, Any]], text_field: str = "text",
                    suffix_tokens: int = 50, min_prompt_tokens: int = 1, batch_size: int = 16,
                    bos: bool = False) -> AuditReport:
    """Tokenize the records' texts (as eurotron-prepare does: no special tokens) and audit them."""
    texts = [record[text_field] for record in records]
    tokens = model.tokenizer.encode_batch(texts)
    ids = [_document_id(record, i) for i, record in enumerate(records)]
    return audit_token_documents(model, tokens, suffix_tokens, min_prompt_tokens, batch_size, ids, bos)


def write_report(report: AuditReport, out_dir: Path | str) -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "memorization.json", "markdown": out / "memorization.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(report.to_markdown(), encoding="utf-8")
    return paths

