"""The Goldfish paper's "extreme" memorisation setting, in miniature on CPU.

Hans et al. (2024) trained LLaMA-2-7B for 100 epochs on 100 Wikipedia articles: with the standard
loss greedy decoding reproduced 84/100 articles' last 50 tokens exactly, with goldfish k=4 (h=13)
none. Here a 0.8M-parameter eurotron model is trained for 100 epochs on about twenty short documents
of the shipped demo corpus, once with the standard loss and once with goldfish (k=4, h=13, hash), from
the same initialisation and data order. Checkpoints along the way are audited with the extraction
protocol of ``eurotron-memorization`` (prompt = document minus its last 50 tokens, greedy decoding),
and the loss on held-out documents of the same corpus is compared.

    python benchmarks/goldfish_memorization.py                                 # ~6 min, 1 CPU thread
    python benchmarks/goldfish_memorization.py --epochs 50 --docs 12 --heldout 6  # a quicker look

Writes to --out (default runs/goldfish_memorization): results.json, results.md, memorization.png
and the two runs. The table and figure are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Dict, List

import torch

from eurotron.audit.memorization import AuditModel, audit_token_documents, eurotron_next_token_fn
from eurotron.compose import compose_prepare, compose_train
from eurotron.data.loader import TokenDataset
from eurotron.data.prepare import prepare
from eurotron.data.tokenizer import Tokenizer
from eurotron.paths import DEMO_CORPUS
from eurotron.train.checkpoint import load_checkpoint
from eurotron.train.metrics import read_metrics
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

EVALS_PER_AUDIT = 4
LOSSES = {
    "standard": ["loss=standard"],
    "goldfish": ["loss=goldfish", "loss.k=4", "loss.h=13", "loss.strategy=hash"],
}


def model_overrides(hidden: int, layers: int, seq_len: int) -> List[str]:
    """A Llama-shaped model: 4 query heads, 2 KV heads, SwiGLU FFN of ~2.75 x hidden, vocab 1024."""
    ffn = (hidden * 11 // 4 + 15) // 16 * 16
    return ["model.vocab_size=1024", f"model.hidden_size={hidden}", f"model.num_layers={layers}",
            "model.num_heads=4", "model.num_kv_heads=2", f"model.ffn_hidden_size={ffn}", f"model.max_seq_len={seq_len}"]


def truncate(text: str, max_chars: int) -> str:
    """The text's first `max_chars` characters at most, cut at a space."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[:cut if cut > 0 else max_chars]


def select_documents(n_train: int, n_heldout: int, max_chars: int, seed: int):
    """Training and held-out documents of the demo corpus, shortened to `max_chars` characters."""
    records = [json.loads(line) for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(records)
    if len(records) < n_train + n_heldout:
        raise SystemExit(f"the demo corpus has only {len(records)} documents")
    records = [{**r, "text": truncate(r["text"], max_chars)} for r in records[:n_train + n_heldout]]
    return records[:n_train], records[n_train:]


def write_corpus(train: List[dict], heldout: List[dict], path: Path, every: int) -> None:
    """JSONL in which every `every`-th document is held out (eurotron-prepare's eval split rule)."""
    lines, t, h = [], iter(train), iter(heldout)
    for i in range(len(train) + len(heldout)):
        lines.append(next(h) if i % every == every - 1 else next(t))
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")


def split_documents(data: Path, split: str) -> List[List[int]]:
    """The token ids of every document of a prepared split, as trained on (without the EOS)."""
    dataset = TokenDataset(data, split)
    return [dataset.doc(i)[:-1].tolist() for i in range(dataset.num_docs)]


def train_run(name: str, data: Path, out: Path, args, steps: int, every: int, eval_batches: int) -> Path:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg, yaml_text = compose_train([
        f"data.path={data}", f"run_dir={run_dir}", f"name={name}", f"data.seq_len={args.seq_len}",
        f"data.global_batch_size={args.batch}", f"data.micro_batch_size={args.batch}", f"train.steps={steps}",
        f"optim.lr={args.lr}", "optim.weight_decay=0.0", "scheduler=constant", "scheduler.warmup_steps=10",
        f"checkpoint.every={every}", "checkpoint.keep_last=1000", f"eval.every={max(1, every // EVALS_PER_AUDIT)}",
        f"eval.batches={eval_batches}",
        "logging.plot_loss_curve=false", "logging.console=false", "train.seed=0",
        *model_overrides(args.hidden, args.layers, args.seq_len), *LOSSES[name],
    ])
    validate_train_config(cfg, world_size=1)
    started = time.perf_counter()
    Trainer(cfg, yaml_text).fit()
    print(f"[{name}] {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def audit_run(run_dir: Path, train_docs: List[List[int]], heldout_docs: List[List[int]], samples_per_epoch: int,
              args) -> Dict:
    """Audit every checkpoint of a run on its training documents, and the last one also on the
    held-out documents (never trained on: the "unseen" baseline); collect the held-out loss curve."""
    from eurotron.generation import load_model_from_checkpoint

    epochs = lambda step: step * args.batch / samples_per_epoch  # noqa: E731
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    model, cfg, _ = load_model_from_checkpoint(checkpoints[0])
    tokenizer = Tokenizer.load(checkpoints[0] / "tokenizer")
    audit_model = AuditModel(eurotron_next_token_fn(model, True), tokenizer, cfg.model.max_seq_len,
                             "eurotron", str(run_dir))
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r}
    rows = []
    for ckpt in checkpoints:
        load_checkpoint(ckpt, model, optimizer=None)
        model.eval()
        step = int(ckpt.name.split("_")[1])
        a = audit_token_documents(audit_model, train_docs, args.suffix_tokens, batch_size=16).aggregate
        rows.append({"step": step, "epochs": epochs(step), "eval_loss": evals.get(step),
                     **{k: a[k] for k in ("documents", "exact_matches", "exact_match_rate", "token_accuracy", "rouge_l")}})
        print(f"[{run_dir.name}] step {step:5d} epochs {rows[-1]['epochs']:6.1f} exact {a['exact_matches']}/"
              f"{a['documents']} token acc {a['token_accuracy']:.3f} Rouge-L {a['rouge_l']:.3f} "
              f"held-out loss {evals.get(step, float('nan')):.3f}", flush=True)
    unseen = audit_token_documents(audit_model, heldout_docs, args.suffix_tokens, batch_size=16).aggregate
    return {"audits": rows, "unseen": {k: unseen[k] for k in ("documents", "exact_matches", "token_accuracy", "rouge_l")},
            "heldout_loss": [{"step": s, "epochs": epochs(s), "loss": v} for s, v in sorted(evals.items())]}


def plot(results: Dict[str, Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, run in results.items():
        x = [r["epochs"] for r in run["audits"]]
        axes[0].plot(x, [100 * r["exact_match_rate"] for r in run["audits"]], "o-", label=name)
        axes[1].plot(x, [r["rouge_l"] for r in run["audits"]], "o-", label=f"{name}, training documents")
        axes[1].axhline(run["unseen"]["rouge_l"], ls=":", color=axes[1].lines[-1].get_color(),
                        label=f"{name}, held-out documents (end)")
        axes[2].plot([r["epochs"] for r in run["heldout_loss"]], [r["loss"] for r in run["heldout_loss"]], ".-",
                     label=name)
    axes[0].set_ylabel("training documents reproduced exactly (%)")
    axes[1].set_ylabel("Rouge-L of the greedy 50-token suffix")
    axes[2].set_ylabel("held-out loss (nats/token)")
    for ax in axes:
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("standard vs goldfish (k=4, h=13) loss, trained for many epochs on the same documents")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(results: Dict[str, Dict]) -> str:
    lines = ["| epochs | exact match, standard | exact match, goldfish | Rouge-L, standard | Rouge-L, goldfish | "
             "held-out loss, standard | held-out loss, goldfish |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s, g in zip(results["standard"]["audits"], results["goldfish"]["audits"]):
        n = s["documents"]
        lines.append(f"| {s['epochs']:.0f} | {s['exact_matches']}/{n} | {g['exact_matches']}/{n} | "
                     f"{s['rouge_l']:.3f} | {g['rouge_l']:.3f} | {s['eval_loss']:.3f} | {g['eval_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/goldfish_memorization"))
    parser.add_argument("--docs", type=int, default=24, help="training documents (before eurotron-prepare's filters)")
    parser.add_argument("--heldout", type=int, default=12, help="held-out documents (idem)")
    parser.add_argument("--max-chars", type=int, default=400, help="documents are cut to this many characters")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--audits", type=int, default=5, help="audited checkpoints per run")
    parser.add_argument("--suffix-tokens", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--seed", type=int, default=0, help="which demo documents are picked")
    args = parser.parse_args()
    if args.heldout < 1 or args.docs % args.heldout:
        raise SystemExit("--docs must be a multiple of --heldout (every n-th document is held out)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    every = (args.docs + args.heldout) // args.heldout
    corpus = out / "corpus.jsonl"
    write_corpus(*select_documents(args.docs, args.heldout, args.max_chars, args.seed), corpus, every)
    # eurotron-prepare with its default filters (opt-out, PII, dedup): the audit reads the documents
    # back from the prepared splits, so it checks exactly the token sequences that were trained on.
    data = out / "data"
    prepare(compose_prepare(["source.type=jsonl", f"source.path={corpus}", f"output_dir={data}",
                             "tokenizer.vocab_size=1024", f"eval_every_nth_document={every}", "overwrite=true"]),
            progress=False)
    train_docs, heldout_docs = split_documents(data, "train"), split_documents(data, "eval")
    tokens = sum(len(d) + 1 for d in train_docs)
    samples_per_epoch = (tokens - 1) // args.seq_len
    eval_batches = max(1, (sum(len(d) + 1 for d in heldout_docs) - 1) // args.seq_len // args.batch)
    # Checkpoints (audits) every `every_steps`; held-out loss EVALS_PER_AUDIT times as often.
    every_steps = EVALS_PER_AUDIT * max(1, math.ceil(args.epochs * samples_per_epoch / args.batch / args.audits
                                                     / EVALS_PER_AUDIT))
    steps = every_steps * args.audits
    print(f"{len(train_docs)} training documents, {tokens} tokens, {samples_per_epoch} samples/epoch; {steps} steps = "
          f"{steps * args.batch / samples_per_epoch:.0f} epochs; {len(heldout_docs)} held-out documents", flush=True)

    results = {}
    for name in args.losses:
        run_dir = train_run(name, data, out, args, steps, every_steps, eval_batches)
        results[name] = audit_run(run_dir, train_docs, heldout_docs, samples_per_epoch, args)
    summary = {
        "command": "python benchmarks/goldfish_memorization.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "losses")),
        "model": model_overrides(args.hidden, args.layers, args.seq_len), "losses": LOSSES,
        "train_documents": len(train_docs), "heldout_documents": len(heldout_docs), "train_tokens": tokens,
        "samples_per_epoch": samples_per_epoch, "steps": steps, "results": results, "torch": torch.__version__,
    }
    if "goldfish" in results:
        frac = [r["goldfish_dropped_frac"] for r in read_metrics(out / "goldfish" / "metrics.jsonl")]
        summary["goldfish_dropped_frac_mean"] = sum(frac) / len(frac)
    summary["wall_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, out / "memorization.png")
    for name, run in results.items():
        u, best = run["unseen"], min(run["heldout_loss"], key=lambda r: r["loss"])
        print(f"{name}: held-out documents (never trained on) at the end: {u['exact_matches']}/{u['documents']} exact, "
              f"Rouge-L {u['rouge_l']:.3f}; lowest held-out loss {best['loss']:.4f} at epoch {best['epochs']:.0f}")
    if len(results) == 2:
        table = markdown(results)
        (out / "results.md").write_text(table)
        s, g = (results[n]["heldout_loss"] for n in ("standard", "goldfish"))
        lo = {n: min(r["loss"] for r in results[n]["heldout_loss"]) for n in results}
        print(table)
        print(f"goldfish dropped {summary['goldfish_dropped_frac_mean']:.1%} of target tokens; held-out loss at the "
              f"end: standard {s[-1]['loss']:.4f}, goldfish {g[-1]['loss']:.4f} "
              f"({100 * (g[-1]['loss'] / s[-1]['loss'] - 1):+.1f}%); lowest: standard {lo['standard']:.4f}, "
              f"goldfish {lo['goldfish']:.4f} ({100 * (lo['goldfish'] / lo['standard'] - 1):+.1f}%)")
    print(f"{summary['wall_s']:.0f} s in all; results in {out}")


if __name__ == "__main__":
    main()
