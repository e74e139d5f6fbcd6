"""What a search episode achieved, for evaluation: EM, F1, judge accuracy, searches per episode.

    from envs.search.metrics import search_metrics
    search_metrics(trajectories)   # also what `rl eval` and the trainer's evaluations report for env search
"""

from __future__ import annotations

import re

from envs.base import Trajectory
from envs.search.qa import contains_answer, exact_match, f1_score

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def last_answer(trajectory: Trajectory) -> str | None:
    """The last <answer>...</answer> in the agent's own text: its actions, never the prompt or observations."""
    found = _ANSWER.findall("".join(t.action for t in trajectory.turns))
    return found[-1].strip() if found else None


def judge_pairs(trajectory: Trajectory, pairing: str = "adjacent") -> list[tuple[int, int]]:
    """(search turn, judge turn) pairs.

    adjacent: each judgment that directly follows a search's information, with that search.
    next (ReSeek's code): each search with the first judgment after it, wherever that is.
    """
    turns = trajectory.turns
    judges = [t for t, turn in enumerate(turns) if turn.info.get("action") == "judge"]
    searches = [t for t, turn in enumerate(turns) if turn.info.get("action") == "search"]
    if pairing == "next":
        return [(s, min(j for j in judges if j > s)) for s in searches if judges and judges[-1] > s]
    return [(j - 1, j) for j in judges if j > 0 and turns[j - 1].info.get("action") == "search"]


def search_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """EM, F1, judge accuracy and searches per episode, over whole episodes (for evaluation).

    A judgment is right when it matches the gold-passage oracle (the information holds this
    hop's gold passage) where the task names gold passages, else the answer oracle.
    """
    em, f1, searches, answered, judged, right = [], [], [], [], 0, 0
    for tr in trajectories:
        answer, gold = last_answer(tr), tr.task.metadata["answers"]
        em.append(exact_match(answer, gold) if answer is not None else 0.0)
        f1.append(f1_score(answer, gold) if answer is not None else 0.0)
        answered.append(float(answer is not None))
        searches.append(float(sum(t.info.get("action") == "search" for t in tr.turns)))
        gold_docs = set(tr.task.metadata.get("gold_doc_ids") or [])
        for s, j in judge_pairs(tr):
            info = tr.turns[s].info
            ideal = bool(gold_docs & set(info["doc_ids"])) if gold_docs else contains_answer(info["information"], gold)
            judged += 1
            right += (tr.turns[j].info["verdict"] == "yes") == ideal
    n = max(len(trajectories), 1)
    return {
        "em": sum(em) / n,
        "f1": sum(f1) / n,
        "judge_accuracy": right / judged if judged else float("nan"),
        "judgments_per_episode": judged / n,
        "searches_per_episode": sum(searches) / n,
        "answered": sum(answered) / n,
    }
