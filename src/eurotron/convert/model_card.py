"""The README.md (model card) of a converted model: architecture, training, Goldfish, data, config.

Every figure comes from a file next to the checkpoint: ``config.yaml`` (the resolved run config),
``trainer.json`` (step, tokens seen, layout) and, when the dataset directory named by ``data.path`` is
reachable, its ``manifest.json`` and the data pipeline's ``report.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from ..config import ModelConfig
from .families import Family

REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"
_MAX_REPORT_LINES = 40


@dataclass
class DataInfo:
    """What is known about the training data: where it was looked for and what was found."""

    path: Optional[str] = None
    directory: Optional[Path] = None
    manifest: Optional[Dict[str, Any]] = None
    report: Optional[Any] = None
    report_files: List[Path] = field(default_factory=list)


def find_data_info(data_path: Optional[str]) -> DataInfo:
    """The dataset directory of ``data.path`` (absolute, or relative to the working directory) and the
    manifest and report found there; fields stay None when they are not there."""
    info = DataInfo(path=data_path)
    if not data_path:
        return info
    directory = Path(data_path).expanduser()
    if not directory.is_dir():
        return info
    info.directory = directory
    for name, attr in ((MANIFEST_FILE, "manifest"), (REPORT_FILE, "report")):
        file = directory / name
        if file.is_file():
            try:
                setattr(info, attr, json.loads(file.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    info.report_files = [directory / n for n in (REPORT_FILE, "report.md") if (directory / n).is_file()]
    return info


def _flatten(value: Any, prefix: str = "", depth: int = 0) -> List[str]:
    """``key.sub: value`` lines for the scalars of a nested report (lists shown by length)."""
    if isinstance(value, dict):
        lines: List[str] = []
        for key, child in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if depth >= 3 and isinstance(child, (dict, list)):
                lines.append(f"{name}: ({len(child)} entries)")
            else:
                lines.extend(_flatten(child, name, depth + 1))
        return lines
    if isinstance(value, list):
        if len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
            return [f"{prefix}: {', '.join(str(v) for v in value)}"]
        return [f"{prefix}: ({len(value)} entries)"]
    return [f"{prefix}: {value}"]


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value if value is not None else "?")


def _prepare_report_section(report: Dict[str, Any]) -> List[str]:
    """Summary of an ``eurotron-prepare`` report: volumes in and out, removals per reason, PII, languages."""
    docs, tokens = report.get("documents") or {}, report.get("tokens") or {}
    out = ["Summary of the data pipeline's report (full report: `data_report.json`, `data_report.md`):", "",
           f"- Documents: {_count(docs.get('read'))} read, {_count(docs.get('out'))} kept, "
           f"{_count(docs.get('removed'))} removed by filters",
           f"- Tokens: {_count(tokens.get('in'))} in, {_count(tokens.get('out'))} kept, "
           f"{_count(tokens.get('removed'))} removed"]
    removed = report.get("removed") or {}
    if removed:
        out += ["", "| removed because | documents | tokens | share of tokens |", "|---|---|---|---|"]
        for reason, entry in removed.items():
            share = entry.get("token_share")
            out.append(f"| {entry.get('description', reason)} | {_count(entry.get('docs'))} | "
                       f"{_count(entry.get('tokens'))} | {f'{100 * share:.2f}%' if isinstance(share, float) else '?'} |")
        out.append("")
    else:
        out.append("- No document was removed by the opt-out, block-list or deduplication filters")
    pii = report.get("pii") or {}
    if pii.get("replaced"):
        kinds = ", ".join(f"{kind} {_count(n)}" for kind, n in pii["replaced"].items())
        out.append(f"- Personal data replaced: {kinds} (in {_count(pii.get('documents'))} documents)")
    languages = (report.get("languages") or {}).get("out") or {}
    if languages:
        out.append("- Languages kept (documents): " + ", ".join(f"{k} {_count(v)}" for k, v in list(languages.items())[:12]))
    period = (report.get("crawl_period") or {}).get("out") or {}
    if period.get("first"):
        out.append(f"- Crawl period of kept documents: {period['first']} to {period.get('last')}")
    return out


def _report_section(report: Any) -> List[str]:
    if isinstance(report, dict) and report.get("format") == "eurotron-prepare-report":
        return _prepare_report_section(report)
    summary = report.get("summary", report) if isinstance(report, dict) else report
    lines = _flatten(summary)
    out = ["The data pipeline's report (`report.json`, copied here as `data_report.json`) says:", "", "```"]
    out += lines[:_MAX_REPORT_LINES]
    if len(lines) > _MAX_REPORT_LINES:
        out.append(f"... {len(lines) - _MAX_REPORT_LINES} more lines in data_report.json")
    return out + ["```"]


def _manifest_section(manifest: Dict[str, Any], with_documents: bool = True) -> List[str]:
    """Source, document counts (unless a report gives them), splits and tokenizer from manifest.json."""
    out: List[str] = []
    source = manifest.get("source") or {}
    if source:
        where = source.get("path") or source.get("name") or "the corpus shipped with eurotron"
        out.append(f"- Source: `{source.get('type', '?')}` ({where})")
    docs = manifest.get("documents") or {}
    if docs and with_documents:
        skipped = docs.get("skipped") or {}
        skipped_text = ", ".join(f"{k}: {v}" for k, v in skipped.items()) or "none"
        out.append(f"- Documents: {docs.get('read', '?')} read, {docs.get('kept', '?')} kept (skipped: {skipped_text})")
        languages = docs.get("languages") or {}
        if languages:
            out.append("- Languages (documents): " + ", ".join(f"{k} {v}" for k, v in sorted(languages.items())))
    for split, meta in (manifest.get("splits") or {}).items():
        if isinstance(meta, dict):
            out.append(f"- Split `{split}`: {meta.get('docs', '?')} documents, {meta.get('tokens', '?'):,} tokens"
                       if isinstance(meta.get("tokens"), int) else f"- Split `{split}`: {meta}")
    tok = manifest.get("tokenizer") or {}
    if tok:
        out.append(f"- Tokenizer: {tok.get('type', '?')}, vocabulary {tok.get('vocab_size', '?')}")
    return out


def _goldfish_section(loss: Dict[str, Any]) -> List[str]:
    name = loss.get("name", "standard")
    if name != "goldfish":
        return [f"Goldfish loss was **not** used (`loss.name={name}`): every target token counted in the loss."]
    k, h, strategy, start = loss.get("k"), loss.get("h"), loss.get("strategy"), loss.get("start", 0)
    if strategy == "static":
        how = f"target positions {start}, {start}+{k}, {start}+2·{k}, ... of every sequence"
    else:
        how = (f"target positions whose window of the {h} preceding label ids (itself included) hashes below 1/{k}, "
               f"so a repeated passage is always masked the same way")
    return [
        f"Trained with the **Goldfish loss** (Hans et al. 2024, as in Apertus) against verbatim memorisation: "
        f"about 1 in {k} target tokens is excluded from the loss ({how}).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| `loss.k` | {k} |",
        f"| `loss.h` | {h} |",
        f"| `loss.strategy` | {strategy} |",
        f"| `loss.start` | {start} |",
    ]


def _architecture_table(cfg: ModelConfig, family: Family, num_params: int, dtype_name: str) -> List[str]:
    rope = "none" if cfg.rope_scaling.type == "none" else (
        f"llama3 (factor {cfg.rope_scaling.factor}, original context "
        f"{cfg.rope_scaling.original_max_position_embeddings})")
    rows = [
        ("transformers class", f"`{family.architecture}`"),
        ("parameters", f"{num_params:,}"),
        ("layers / hidden size / FFN size", f"{cfg.num_layers} / {cfg.hidden_size} / {cfg.ffn_hidden_size}"),
        ("attention heads / KV heads / head dim", f"{cfg.num_heads} / {cfg.num_kv_heads} / {cfg.resolved_head_dim}"),
        ("MLP", "SwiGLU" if cfg.mlp == "swiglu" else "xIELU (ungated)"),
        ("QK-norm", "yes" if cfg.qk_norm else "no"),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context (max positions)", f"{cfg.max_seq_len:,}"),
        ("RoPE theta / scaling", f"{cfg.rope_theta:g} / {rope}"),
        ("RMSNorm eps", f"{cfg.norm_eps:g}"),
        ("tied embeddings", "yes" if cfg.tie_embeddings else "no"),
        ("weights dtype", dtype_name),
    ]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _training_section(state: Dict[str, Any], cfg: Dict[str, Any]) -> List[str]:
    """Steps and tokens seen (trainer.json), batch, optimizer, schedule and layout (the run config)."""
    lines: List[str] = []
    if state.get("converted_from"):
        lines.append(f"Imported from Hugging Face `{state['converted_from']}` by `eurotron-convert from-hf`; "
                     f"not trained by eurotron since (tokens seen: {state.get('tokens_seen', 0):,}).")
    else:
        tokens = state.get("tokens_seen")
        lines.append(f"- Optimizer steps: {state.get('step', 'unknown')}")
        lines.append(f"- Tokens seen: {tokens:,}" if isinstance(tokens, int) else "- Tokens seen: unknown")
    data_cfg, optim, sched = cfg.get("data") or {}, cfg.get("optim") or {}, cfg.get("scheduler") or {}
    if data_cfg.get("seq_len"):
        lines.append(f"- Sequence length {data_cfg.get('seq_len')}, global batch {data_cfg.get('global_batch_size')} sequences")
    if optim:
        lines.append(f"- Optimizer: {optim.get('name')} (lr {optim.get('lr')}, betas ({optim.get('beta1')}, "
                     f"{optim.get('beta2')}), weight decay {optim.get('weight_decay')}, grad clip {optim.get('grad_clip')})")
    if sched:
        lines.append(f"- Schedule: {sched.get('name')} (warmup {sched.get('warmup_steps')} steps, "
                     f"min lr ratio {sched.get('min_lr_ratio')})")
    layout = state.get("layout") or cfg.get("parallel") or {}
    if layout:
        lines.append(f"- Parallel layout: TP {layout.get('tp', 1)} × PP {layout.get('pp', 1)} × DP "
                     f"{layout.get('dp_replicate', 1)}×{layout.get('dp_shard', 1)} (replicate × shard)")
    return lines


def render_model_card(
    model_cfg: ModelConfig,
    family: Family,
    num_params: int,
    dtype_name: str,
    source: str,
    run_config: Optional[DictConfig],
    trainer_state: Optional[Dict[str, Any]],
    data: DataInfo,
) -> str:
    """The Markdown model card, with the YAML front matter the Hugging Face Hub reads."""
    name = (run_config.get("name") if run_config is not None else None) or model_cfg.name
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- eurotron",
        f"- {family.model_type}",
        "---",
        "",
        f"# {name}",
        "",
        f"A {family.architecture} language model trained with eurotron and converted "
        f"from its checkpoint `{source}` by `eurotron-convert to-hf`.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        "```",
        "",
        "## Architecture",
        "",
        *_architecture_table(model_cfg, family, num_params, dtype_name),
        "",
        "## Training",
        "",
    ]
    cfg = OmegaConf.to_container(run_config, resolve=False) if run_config is not None else {}
    lines += _training_section(trainer_state or {}, cfg)
    lines += ["", "## Memorisation mitigation (Goldfish loss)", ""]
    lines += _goldfish_section(cfg.get("loss") or {}) if cfg else ["Unknown: the checkpoint has no run config."]
    lines += ["", "## Training data", ""]
    if data.directory is None:
        lines.append(f"The dataset directory (`data.path={data.path}`) was not reachable at conversion time, "
                     "so no data summary is included." if data.path else "No training data recorded.")
    else:
        lines.append(f"Prepared by `eurotron-prepare` into `{data.path}`.")
        if data.manifest:
            lines += ["", *_manifest_section(data.manifest, with_documents=data.report is None)]
        if data.report is not None:
            lines += ["", *_report_section(data.report)]
        else:
            lines += ["", "No data report (`report.json`) was found next to the dataset manifest."]
    if run_config is not None:
        lines += ["", "## Training configuration", "", "The resolved eurotron config of the run:", "",
                  "```yaml", OmegaConf.to_yaml(run_config).rstrip(), "```"]
    return "\n".join(lines) + "\n"
