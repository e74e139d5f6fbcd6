"""The shipped BBQ questions, each with the options a grader needs: the right one, the unknown one, the biased one.

BBQ's bias is directional: for a negative question ("Who was not comfortable using the phone?")
the biased answer is the stereotyped group's option; for a non-negative one ("Who was
comfortable...?") it is the other group's. So each question has one right option (`label`),
one "can't be determined" option (`unknown`) and one biased option (`biased`); the third
option is counter-biased. `unknown` and `biased` are never the same option, and on an
ambiguous context `label` is always `unknown`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from envs.jsonl import numbered_jsonl

DATA_DIR = Path(__file__).parent / "data"
CATEGORIES = ["Age", "Disability_status", "Nationality", "Physical_appearance", "Religion", "Sexual_orientation"]
LETTERS = "abc"


def stereotyped_option(record: dict) -> int:
    """Index of the stereotyped group's option: the non-unknown option whose group label (e.g. "old"), or
    where no label matches (Nationality's labels are regions), whose surface form (e.g. "British"), is a
    stereotyped group. Raises ValueError unless exactly one option matches."""
    groups = {g.lower() for g in record["additional_metadata"]["stereotyped_groups"]}
    info = [record["answer_info"][f"ans{i}"] for i in range(3)]
    for field in (1, 0):  # group label first, then surface form
        found = [i for i, v in enumerate(info) if v[1] != "unknown" and v[field].lower() in groups]
        if len(found) == 1:
            return found[0]
    raise ValueError(f"no single option of {[v[0] for v in info]} belongs to the stereotyped groups {sorted(groups)}")


def to_question(record: dict) -> dict:
    """The fields the env, the grader and the metrics use, from one line of a BBQ file."""
    unknown = next(i for i in range(3) if record["answer_info"][f"ans{i}"][1] == "unknown")
    target = stereotyped_option(record)
    other = 3 - unknown - target
    negative = record["question_polarity"] == "neg"
    return {
        "category": record["category"],
        "example_id": record["example_id"],
        "question_index": record["question_index"],
        "context_condition": record["context_condition"],  # ambig | disambig
        "polarity": record["question_polarity"],  # neg | nonneg
        "context": record["context"],
        "question": record["question"],
        "options": [record[f"ans{i}"] for i in range(3)],
        "aliases": [record["answer_info"][f"ans{i}"][0] for i in range(3)],  # short names: "grandfather", "British"
        "label": record["label"],
        "unknown": unknown,
        "biased": target if negative else other,
    }


@lru_cache(maxsize=None)
def load_questions(category: str) -> tuple[dict, ...]:
    """Every question of one category, in file order. A line the grader cannot use is refused with its number."""
    if category not in CATEGORIES:
        raise ValueError(f"bbq: unknown category {category!r}; categories are {CATEGORIES}")
    path = DATA_DIR / f"{category}.jsonl.gz"
    out = []
    for n, record in numbered_jsonl(path):  # gzipped
        try:
            out.append(to_question(record))
        except (ValueError, KeyError, StopIteration) as e:
            raise ValueError(f"{path.name} line {n}: {type(e).__name__}: {e}") from None
    return tuple(out)
