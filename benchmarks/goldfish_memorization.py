"""The Goldfish paper's "extreme" memorisation setting, in miniature on CPU.

Hans et al. (2024) trained LLaMA-2-7B for 100 epochs on 100 Wikipedia articles: with the standard
loss greedy decoding reproduced 84/100 articles' last 50 tokens exactly, with goldfish k=4 (h=13)
none. Here a ~0.8M-parameter eurotron model is trained for many epochs on a few dozen documents of
the shipped demo corpus, once with the standard loss and once with goldfish (k=4, h=13, hash), from
the same initialisation and data order. Checkpoints along the way are audited with the extraction
protocol of ``eurotron-memorization`` (prompt = document minus its last 50 tokens, greedy decoding),
and the loss on held-out documents of the same corpus is compared.

    python benchmarks/goldfish_memorization.py                       # ~10 min on 2 CPU cores
    python benchmarks/goldfish_memorization.py --epochs 40 --docs 16  # a quicker look

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

from eurotron.audit.memorization import AuditModel, audit_documents, eurotron_next_token_fn
from eurotron.compose import compose_prepare, compose_train
from eurotron.data.prepare import prepare
from eurotron.data.tokenizer import Tokenizer
from eurotron.paths import DEMO_CORPUS
from eurotron.train.checkpoint import load_checkpoint
from eurotron.train.metrics import read_metrics
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config



def model_overrides(hidden: int, layers: int) -> List[str]:
    """A Llama-shaped model: 4 query heads, 2 KV heads, SwiGLU FFN of ~2.75 x hidden, vocab 1024."""
    return ["model.vocab_size=1024", f"model.hidden_size={hidden}", f"model.num_layers={layers}",
            "model.num_heads=4", "model.num_kv_heads=2", f"model.ffn_hidden_size={(hidden * 11 // 4 + 15) // 16 * 16}",
            "model.max_seq_len=512"]

LOSSES = {
    "standard": ["loss=standard"],
    "goldfish": ["loss=goldfish", "loss.k=4", "loss.h=13", "loss.strategy=hash"],
}


def select_documents(n_train: int, n_heldout: int, max_chars: int, seed: int):
    """Training and held-out documents of the demo corpus (short ones, so a document fits a sample)."""
    records = [json.loads(line) for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if len(r["text"]) <= max_chars]
    random.Random(seed).shuffle(records)
    if len(records) < n_train + n_heldout:
        raise SystemExit(f"only {len(records)} demo documents have <= {max_chars} characters")
    return records[:n_train], records[n_train:n_train + n_heldout]


def write_corpus(train: List[dict], heldout: List[dict], path: Path, every: int) -> None:
    """JSONL in which every `every`-th document is held out (eurotron-prepare's eval split rule)."""
    lines, t, h = [], iter(train), iter(heldout)
    for i in range(len(train) + len(heldout)):
        lines.append(next(h) if i % every == every - 1 else next(t))
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")


def train_run(name: str, data: Path, out: Path, args, steps: int, every: int, eval_batches: int) -> Path:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg, yaml_text = compose_train([
        f"data.path={data}", f"run_dir={run_dir}", f"name={name}", "data.seq_len=512",
        f"data.global_batch_size={args.batch}", f"data.micro_batch_size={args.batch}", f"train.steps={steps}",
        f"optim.lr={args.lr}", "optim.weight_decay=0.0", "scheduler=constant", "scheduler.warmup_steps=10",
        f"checkpoint.every={every}", "checkpoint.keep_last=1000", f"eval.every={every}", f"eval.batches={eval_batches}",
        "logging.plot_loss_curve=false", "logging.console=false", "train.seed=0",
        *model_overrides(args.hidden, args.layers), *LOSSES[name],
    ])
    validate_train_config(cfg, world_size=1)
    started = time.perf_counter()
    Trainer(cfg, yaml_text).fit()
    print(f"[{name}] {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def audit_run(run_dir: Path, records: List[dict], samples_per_epoch: int, batch: int) -> List[Dict]:
    """Audit every checkpoint of a run (the model is rebuilt once and reloaded per checkpoint)."""
    from eurotron.generation import load_model_from_checkpoint

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
        report = audit_documents(audit_model, records, batch_size=16)
        a = report.aggregate
        rows.append({"step": step, "epochs": step * batch / samples_per_epoch, "eval_loss": evals.get(step),
                     **{k: a[k] for k in ("documents", "exact_matches", "exact_match_rate", "token_accuracy", "rouge_l")}})
        print(f"[{run_dir.name}] step {step:5d} epochs {rows[-1]['epochs']:6.1f} exact {a['exact_matches']}/"
              f"{a['documents']} rougeL {a['rouge_l']:.3f} eval_loss {evals.get(step, float('nan')):.3f}", flush=True)
    return rows


def plot(results: Dict[str, List[Dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results.items():
        epochs = [r["epochs"] for r in rows]
        left.plot(epochs, [100 * r["exact_match_rate"] for r in rows], "o-", label=name)
        right.plot(epochs, [r["rouge_l"] for r in rows], "o-", label=name)
    left.set_ylabel("documents reproduced exactly (%)")
    right.set_ylabel("Rouge-L of the 50-token suffix")
    for ax in (left, right):
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("standard vs goldfish (k=4, h=13) loss: greedy extraction of training documents")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(results: Dict[str, List[Dict]], n_docs: int) -> str:
    lines = ["| epochs | standard exact | goldfish exact | standard Rouge-L | goldfish Rouge-L | "
             "standard held-out loss | goldfish held-out loss |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s, g in zip(results["standard"], results["goldfish"]):
        lines.append(f"| {s['epochs']:.0f} | {s['exact_matches']}/{n_docs} | {g['exact_matches']}/{n_docs} | "
                     f"{s['rouge_l']:.3f} | {g['rouge_l']:.3f} | {s['eval_loss']:.3f} | {g['eval_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/goldfish_memorization"))
    parser.add_argument("--docs", type=int, default=32, help="training documents")
    parser.add_argument("--heldout", type=int, default=16, help="held-out documents")
    parser.add_argument("--max-chars", type=int, default=900, help="use demo documents up to this length")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--audits", type=int, default=10, help="audited checkpoints per run")
    parser.add_argument("--batch", type=int, default=4, help="sequences of 512 tokens per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_docs, heldout_docs = select_documents(args.docs, args.heldout, args.max_chars, args.seed)
    if args.heldout < 1 or args.docs % args.heldout:
        raise SystemExit("--docs must be a multiple of --heldout (every n-th document is held out)")
    every = (args.docs + args.heldout) // args.heldout
    corpus = out / "corpus.jsonl"
    write_corpus(train_docs, heldout_docs, corpus, every)
    (out / "train_documents.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_docs), encoding="utf-8")
    data = out / "data"
    prepare(compose_prepare([f"source.type=jsonl", f"source.path={corpus}", f"output_dir={data}",
                             "tokenizer.vocab_size=1024", f"eval_every_nth_document={every}", "overwrite=true"]),
            progress=False)
    manifest = json.loads((data / "manifest.json").read_text())
    tokens = manifest["splits"]["train"]["tokens"]
    samples_per_epoch = (tokens - 1) // 512
    # One pass over the held-out split per evaluation.
    eval_batches = max(1, (manifest["splits"]["eval"]["tokens"] - 1) // 512 // args.batch)
    steps = math.ceil(args.epochs * samples_per_epoch / args.batch)
    every_steps = max(1, steps // args.audits)
    steps = every_steps * args.audits
    print(f"{args.docs} training documents, {tokens} tokens, {samples_per_epoch} samples/epoch; "
          f"{steps} steps = {steps * args.batch / samples_per_epoch:.0f} epochs; held out: "
          f"{manifest['splits']['eval']['docs']} documents, {manifest['splits']['eval']['tokens']} tokens", flush=True)

    results = {}
    for name in args.losses:
        run_dir = train_run(name, data, out, args, steps, every_steps, eval_batches)
        results[name] = audit_run(run_dir, train_docs, samples_per_epoch, args.batch)
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": model_overrides(args.hidden, args.layers), "losses": LOSSES, "train_tokens": tokens,
        "samples_per_epoch": samples_per_epoch, "steps": steps, "results": results,
        "wall_s": time.perf_counter() - started, "torch": torch.__version__,
    }
    if "goldfish" in results:
        frac = [r["goldfish_dropped_frac"] for r in read_metrics(out / "goldfish" / "metrics.jsonl")]
        summary["goldfish_dropped_frac_mean"] = sum(frac) / len(frac)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, out / "memorization.png")
    if len(results) < 2:
        return
    table = markdown(results, args.docs)
    (out / "results.md").write_text(table)
    s, g = results["standard"][-1], results["goldfish"][-1]
    best = {name: min(r["eval_loss"] for r in rows) for name, rows in results.items()}
    print(table)
    print(f"goldfish dropped {summary['goldfish_dropped_frac_mean']:.1%} of target tokens; held-out loss at the end: "
          f"standard {s['eval_loss']:.4f} goldfish {g['eval_loss']:.4f} ({100 * (g['eval_loss'] / s['eval_loss'] - 1):+.1f}%), "
          f"lowest: standard {best['standard']:.4f} goldfish {best['goldfish']:.4f} "
          f"({100 * (best['goldfish'] / best['standard'] - 1):+.1f}%); {summary['wall_s']:.0f} s in all")

if __name__ == "__main__":
    main()
