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


def useful(info: dict, gold_docs: set[str], answers: list[str]) -> bool:
    """Whether a search's information is what the question needs: it holds a gold passage where the
    task names gold passages (one per hop), else a gold answer. The oracle of a right judgment."""
    return bool(gold_docs & set(info["doc_ids"])) if gold_docs else contains_answer(info["information"], answers)


def search_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """What search episodes achieved, over whole episodes (for evaluation):

    em, f1, answered          the last answer against the gold answers
    judge_accuracy            judgments that agree with the `useful` oracle
    searches_per_episode, judgments_per_episode
    recovery                  of episodes whose first search brought nothing useful, the share answered right:
                              what a JUDGE "No" and a re-plan are for (nan when no first search missed)
    false_rejection           of judged searches that were useful, the share judged "No" (nan when none)
    research_after_no         of "No" judgments, the share followed by another search (nan when none)
    """
    em, f1, searches, answered = [], [], [], []
    judged = right = missed = recovered = useful_judged = rejected = said_no = searched_again = 0
    for tr in trajectories:
        answer, gold = last_answer(tr), tr.task.metadata["answers"]
        em.append(exact_match(answer, gold) if answer is not None else 0.0)
        f1.append(f1_score(answer, gold) if answer is not None else 0.0)
        answered.append(float(answer is not None))
        search_turns = [t for t, turn in enumerate(tr.turns) if turn.info.get("action") == "search"]
        searches.append(float(len(search_turns)))
        gold_docs = set(tr.task.metadata.get("gold_doc_ids") or [])
        if search_turns and not useful(tr.turns[search_turns[0]].info, gold_docs, gold):
            missed += 1
            recovered += em[-1] == 1.0
        for s, j in judge_pairs(tr):
            ideal, yes = useful(tr.turns[s].info, gold_docs, gold), tr.turns[j].info["verdict"] == "yes"
            judged += 1
            right += yes == ideal
            useful_judged += ideal
            rejected += ideal and not yes
            if not yes:
                said_no += 1
                searched_again += any(t > j for t in search_turns)
    n = max(len(trajectories), 1)
    share = lambda part, whole: part / whole if whole else float("nan")  # noqa: E731
    return {
        "em": sum(em) / n,
        "f1": sum(f1) / n,
        "judge_accuracy": share(right, judged),
        "judgments_per_episode": judged / n,
        "searches_per_episode": sum(searches) / n,
        "answered": sum(answered) / n,
        "recovery": share(recovered, missed),
        "false_rejection": share(rejected, useful_judged),
        "research_after_no": share(searched_again, said_no),
    }
