"""A synthetic web corpus for the prepare benchmarks, as large as asked, built from the demo corpus.

Each document takes 3-8 sentences of one language from the demo corpus's sentences (so the text is
real multilingual prose, with its digits, names and the odd e-mail address), a URL on one of the
demo's origins with a fresh path (so the opt-out filter evaluates real robots.txt rules from the
shipped snapshot and removes what they disallow), a language and a date. Documents are written as
they are made: memory does not depend on the corpus size. Deterministic for a given seed.

    python benchmarks/synthetic_corpus.py /tmp/corpus.jsonl --docs 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "eurotron" / "demo_data" / "demo_corpus.jsonl"
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def _pools() -> Tuple[Dict[str, List[str]], List[str]]:
    by_lang: Dict[str, List[str]] = defaultdict(list)
    origins: List[str] = []
    for line in DEMO.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        parts = urlsplit(doc["url"])
        origins.append(f"{parts.scheme}://{parts.netloc}")
        by_lang[doc["lang"]] += [s.strip() for s in _SENTENCE_END.split(doc["text"]) if len(s.strip()) > 20]
    return dict(by_lang), origins


def write_corpus(path: Path | str, docs: int, seed: int = 0, sentences: Tuple[int, int] = (3, 8)) -> Dict[str, int]:
    """Write `docs` documents of `sentences` (min, max) sentences to `path` (JSONL); return their
    count and characters."""
    by_lang, origins = _pools()
    langs = sorted(by_lang)
    rng = random.Random(seed)
    chars = 0
    with open(path, "w", encoding="utf-8") as out:
        for i in range(docs):
            lang = rng.choice(langs)
            pool = by_lang[lang]
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(*sentences)))
            chars += len(text)
            record = {"text": text, "url": f"{rng.choice(origins)}/{lang}/{i // 1000}/doc-{i}", "lang": lang,
                      "date": f"20{rng.randint(19, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"docs": docs, "chars": chars}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences", type=int, nargs=2, default=(3, 8), metavar=("MIN", "MAX"))
    args = p.parse_args()
    print(json.dumps(write_corpus(args.path, args.docs, args.seed, tuple(args.sentences))))


if __name__ == "__main__":
    main()
