"""eurotron-memorization: how much of its training text does a model reproduce verbatim?

  eurotron-memorization runs/demo --documents docs.jsonl
  eurotron-memorization runs/demo/checkpoints/step_00000300 --documents docs.jsonl --suffix-tokens 50 --out audit/
  eurotron-memorization /models/my-hf-export --documents docs.jsonl --limit 100

Each document's last --suffix-tokens tokens are the suffix, the tokens before them the prompt; the
model greedily decodes the suffix. Writes memorization.json (per document and aggregate) and
memorization.md to --out and prints the aggregate table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eurotron-memorization", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", type=Path,
                   help="eurotron run dir, its checkpoints/ dir or one step_* dir, or a Hugging Face model dir")
    p.add_argument("--documents", type=Path, required=True, help="JSONL file, one document per line")
    p.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    p.add_argument("--suffix-tokens", type=int, default=50, help="tokens to extract per document (default: 50)")
    p.add_argument("--min-prompt-tokens", type=int, default=1,
                   help="skip documents with fewer prompt tokens than this (default: 1)")
    p.add_argument("--limit", type=int, default=0, help="audit only the first N documents (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="documents decoded together (default: 16)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer directory (default: the checkpoint's, or the HF model dir)")
    p.add_argument("--bos", action="store_true", help="start every prompt with the tokenizer's BOS token")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", type=Path, default=Path("memorization"), help="output directory (default: ./memorization)")
    return p.parse_args(argv)


def run(args: argparse.Namespace):
    from ..audit.memorization import AuditError, audit_documents, load_audit_model, read_documents, write_report

    if args.limit < 0:
        raise AuditError(f"--limit={args.limit}: must be >= 0")
    if args.documents.is_dir():
        raise AuditError(f"--documents {args.documents} is a directory; give a JSONL file, one document per line")
    if args.out.exists() and not args.out.is_dir():
        raise AuditError(f"--out {args.out} is a file; give a directory for memorization.json and .md")
    records = read_documents(args.documents, args.text_field, args.limit)
    model = load_audit_model(args.model, device=args.device, tokenizer_path=args.tokenizer)
    report = audit_documents(model, records, args.text_field, args.suffix_tokens, args.min_prompt_tokens,
                             args.batch_size, bos=args.bos)
    report.documents_file = str(args.documents)
    paths = write_report(report, args.out)
    print(report.to_markdown(per_document=False), end="", flush=True)
    print(f"\nwrote {paths['json']} and {paths['markdown']}", flush=True)
    return report


def main(argv=None) -> None:
    args = parse_args(argv)
    exit_on_user_error("eurotron-memorization", lambda: run(args))


if __name__ == "__main__":
    main()
