"""Question-answer data and answer metrics.

Questions come as records {"id", "question", "answers": [...], "hops"?, "gold_doc_ids"?}.
`load_questions` reads them from:

- a generated world's questions.jsonl (envs/search/world.py), which also names gold passages;
- any {"question", "answer"} or {"question", "answers"} JSONL, e.g. the Bamboogle copy shipped
  in envs/search/data/bamboogle (MIT; see its SOURCE.md and LICENSE);
- Search-R1 / FlashRAG files of NQ, HotpotQA, ...: JSONL with "golden_answers", or Search-R1's
  parquet (answers in reward_model.ground_truth.target; needs pyarrow).

The metrics are SQuAD's: answers are normalised (lower case, no punctuation, no
articles, single spaces) before exact match and token F1, and a prediction is
scored against its best-matching gold answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

from envs.jsonl import read_jsonl

BAMBOOGLE = Path(__file__).parent / "data" / "bamboogle" / "test.jsonl"
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: list[str]) -> float:
    """SQuAD token F1 against the best gold answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(text: str, answers: list[str]) -> bool:
    """Whether a normalised gold answer occurs in the normalised text as whole words."""
    haystack = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(a)} " in haystack for a in answers if normalize_answer(a))


def _answers(record: dict) -> list[str]:
    for key in ("answers", "golden_answers", "answer"):
        if key in record:
            value = record[key]
            break
    else:  # Search-R1's parquet keeps them in the reward model's ground truth
        value = ((record.get("reward_model") or {}).get("ground_truth") or {}).get("target")
    if isinstance(value, str):
        value = [value]
    if value is None or not len(value):
        raise ValueError(
            "no answers (expected 'answers', 'golden_answers', 'answer' or reward_model.ground_truth.target)"
        )
    return [str(v) for v in value]


def _question(record: dict) -> str:
    if "question" in record:
        return str(record["question"]).strip()
    prompt = record.get("prompt")  # Search-R1: [{"role": "user", "content": "<instructions> Question: ..."}]
    if isinstance(prompt, (list, tuple)) and prompt and "Question:" in str(prompt[-1].get("content", "")):
        return prompt[-1]["content"].rsplit("Question:", 1)[1].strip()
    raise ValueError("no 'question'")


def _read_records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
        return pq.read_table(path).to_pylist()
    return read_jsonl(path)


def load_questions(path: str | Path) -> list[dict]:
    """Question records {"id", "question", "answers", "hops", "gold_doc_ids"} from a JSONL or parquet file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"question file {str(path)!r} does not exist")
    out = []
    for n, record in enumerate(_read_records(path)):
        try:
            out.append(
                {
                    "id": str(record.get("id", n)),
                    "question": _question(record),
                    "answers": _answers(record),
                    "hops": record.get("hops"),
                    "gold_doc_ids": [str(d) for d in record.get("gold_doc_ids") or []],
                }
            )
        except ValueError as e:
            raise ValueError(f"{path}: record {n}: {e}") from e
    return out
