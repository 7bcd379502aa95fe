"""Real texts for the benchmarks: STS-B sentences, SciFact queries, titles and abstract sentences.

Deduplicated and shuffled with a fixed seed, so every system sees the same texts in the same order.
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STSB = [REPO / "eval" / "stsb" / "sts-test.tsv", REPO / "eval" / "stsb" / "sts-dev.tsv"]
SCIFACT = REPO / "benchmarks" / "data" / "scifact"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def load_texts(seed: int = 0) -> list[str]:
    texts: list[str] = []
    for path in STSB:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts += [row["sentence1"], row["sentence2"]]
    for line in open(SCIFACT / "queries.jsonl", encoding="utf-8"):
        texts.append(json.loads(line)["text"])
    for line in open(SCIFACT / "corpus.jsonl", encoding="utf-8"):
        doc = json.loads(line)
        texts.append(doc["title"])
        texts += [s for s in _SENTENCE_END.split(doc["text"]) if len(s) > 20]
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    random.Random(seed).shuffle(unique)
    return unique
