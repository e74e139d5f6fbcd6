"""Self-correction metrics over (first attempt, last attempt) pairs: how often a retry fixes, keeps or breaks.

One pair per episode (several episodes of one problem are pooled, which is the pooled
estimator of "Confidence v.s. Critique"). "Correct" means every test passed. With
a = correct at turn 1 and b = correct at the last turn:

  acc_t1, acc_tT        P(a), P(b)
  delta                 acc_tT - acc_t1
  delta_i_to_c          P(not a and b)   fractions of all pairs (SCoRe), so delta = i_to_c - c_to_i
  delta_c_to_i          P(a and not b)
  confidence (CL)       P(b | a)         nan when no first attempt was correct
  critique (CS)         P(b | not a)     nan when every first attempt was correct
  rss                   (acc_tT - acc_t1^2) / (2 acc_t1 (1 - acc_t1)), nan when acc_t1 is 0 or 1;
                        0.5 means no change, above 0.5 self-correction helps
  better, worse         share of pairs whose pass count went up / down (CoCoS)
  edit_distance         mean Levenshtein(y1, yT) / (len(y1) + len(yT)) over the programs (SCoRe, Fig. 4)
  identical             share of last attempts identical to the first (collapse to "no edit")
  acc_by_turn/k         share correct at turn k, k = 1 .. the longest episode; an episode that ended
                        earlier counts with its last attempt (the per-turn accuracy curve)

    python -m envs.code.metrics runs/x/episodes/step_000100.jsonl   # from the trainer's episode logs
"""

from __future__ import annotations

import sys

from envs.base import Trajectory
from envs.jsonl import read_jsonl

NAN = float("nan")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else NAN


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, substitute one character) turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def edit_ratio(a: str, b: str) -> float:
    """Levenshtein distance normalised to [0, 1] by the total length (0 for two empty strings)."""
    return levenshtein(a, b) / (len(a) + len(b)) if a or b else 0.0


def self_correction_metrics(
    first_passed: list[int],
    last_passed: list[int],
    n_tests: list[int],
    first_code: list[str] | None = None,
    last_code: list[str] | None = None,
) -> dict[str, float]:
    """The metrics of the module docstring, one entry per episode in each list."""
    a = [p == n and n > 0 for p, n in zip(first_passed, n_tests)]
    b = [p == n and n > 0 for p, n in zip(last_passed, n_tests)]
    acc1, acc2 = _mean(a), _mean(b)
    out = {
        "acc_t1": acc1,
        "acc_tT": acc2,
        "delta": acc2 - acc1,
        "delta_i_to_c": _mean([not x and y for x, y in zip(a, b)]),
        "delta_c_to_i": _mean([x and not y for x, y in zip(a, b)]),
        "confidence": _mean([y for x, y in zip(a, b) if x]),
        "critique": _mean([y for x, y in zip(a, b) if not x]),
        "rss": (acc2 - acc1**2) / (2 * acc1 * (1 - acc1)) if 0 < acc1 < 1 else NAN,
        "better": _mean([q > p for p, q in zip(first_passed, last_passed)]),
        "worse": _mean([q < p for p, q in zip(first_passed, last_passed)]),
    }
    if first_code is not None and last_code is not None:
        out["edit_distance"] = _mean([edit_ratio(x, y) for x, y in zip(first_code, last_code)])
        out["identical"] = _mean([x.strip() == y.strip() for x, y in zip(first_code, last_code)])
    return out


def by_turn_accuracy(trajectories: list[Trajectory]) -> dict[str, float]:
    """acc_by_turn/k for k = 1 .. the longest episode (module docstring)."""
    correct = lambda info: info.get("n_tests", 0) > 0 and info.get("n_passed", 0) == info["n_tests"]  # noqa: E731
    longest = max((len(t.turns) for t in trajectories), default=0)
    return {
        f"acc_by_turn/{k}": _mean([correct(t.turns[min(k, len(t.turns)) - 1].info) for t in trajectories])
        for k in range(1, longest + 1)
    }


def metrics_from_trajectories(trajectories: list[Trajectory]) -> dict[str, float]:
    """The metrics from code episodes' first and last turns (their `info`: n_passed, n_tests, code)."""
    ts = [t for t in trajectories if t.turns]
    first, last = [t.turns[0].info for t in ts], [t.turns[-1].info for t in ts]
    return by_turn_accuracy(ts) | self_correction_metrics(
        [i.get("n_passed", 0) for i in first],
        [i.get("n_passed", 0) for i in last],
        [i.get("n_tests", 0) for i in first],
        [i.get("code", "") for i in first],
        [i.get("code", "") for i in last],
    )


def main(paths: list[str]) -> None:
    trajectories = [Trajectory.from_dict(episode["trajectory"]) for p in paths for episode in read_jsonl(p)]
    for key, value in metrics_from_trajectories(trajectories).items():
        print(f"{key:>14}  {value:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
