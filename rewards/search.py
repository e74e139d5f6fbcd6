"""Rewards for search episodes (envs/search): answer EM/F1, ReSeek's judge reward, format.

    reward:
      - {name: search_answer}                      # outcome: EM of the last answer (metric: f1 for F1)
      - {name: search_judge}                       # process: one reward per judgment, on the judge's turn
      - {name: search_format, weight: 0.5}         # process: malformed turns cost a little
      - {name: search_found}                       # process: the search that finds a gold passage,
                                                   # first or after right Nos

The judge reward (ReSeek) rates each (information, judgment) pair. By default
(`pairing: adjacent`) a judgment is paired only with the information of the search
right before it; `pairing: next` is ReSeek's code, where every information block is
paired with the first judgment after it, so one judgment can count for several blocks.
The ideal judgment comes from an oracle:

    answer     (default) a gold answer occurs in the information (SQuAD-normalised, whole words)
    substring  ReSeek's training code: a gold answer, lower-cased and stripped, is a substring
               of the lower-cased information (so "rome" is found in "Romeo")
    gold_doc   a gold passage was retrieved (generated worlds name one per hop)
    reranker   a cross-encoder scores (gold answer, information) above `threshold`
               (optional dependency: sentence-transformers)

A match earns +0.3 (+`answer_bonus` when the final answer is right; ReSeek's code
uses 0.1), a wrong Yes -0.6, a wrong No -0.3. As in ReSeek's code an episode without
an answer gets no judge reward (`require_answer`). By default a Yes is never right
merely because the final answer is: the oracle alone decides; `yes_if_answer_right`
is ReSeek's code, where a Yes in an episode whose answer is right always counts as right.
`rate_empty: false` leaves searches that returned nothing out of the reward: a No on an
empty result is always right, and a policy that garbles its queries collects it.
Farming: with ReSeek's plain sum, four useless searches each judged No earn 4 x 0.3 = 1.2, more than a right answer
(1.0), so the default aggregate is the mean over the episode's information blocks (one not
judged counts as `unjudged`, 0 by default), which stays within [-0.6, 0.3 + bonus]
however many searches are made; "cap" clips the sum to +-cap instead, "sum" is ReSeek's.

The v1 paper splits the judge signal in two: correctness (the retrieved information
is factually right for the question: it holds a gold answer) and utility (it is
useful for this query: a gold passage, or the reranker). Both are computed and
logged as components whenever their oracle is available; the `oracle` decides
which one is the reward.
"""

from __future__ import annotations

import re

from envs.base import Trajectory
from envs.search.metrics import judge_pairs, last_answer, useful
from envs.search.qa import contains_answer, exact_match, f1_score
from rewards.base import Reward, register_reward

_WELL_FORMED = re.compile(
    r"\s*(<think>(?:(?!</?think>).)*</think>\s*)?<(search|judge|answer)>((?!</?(?:think|search|judge|answer)>).)*</\2>\s*",
    re.S,
)
_OBSERVATION_TAGS = ("<information>", "</information>", "<preview>", "</preview>")


@register_reward("search_answer")
def answer_reward(metric: str = "em"):
    """Outcome: EM (or token F1) of the last answer against the gold answers; 0 without an answer."""
    if metric not in ("em", "f1"):
        raise ValueError(f"metric must be 'em' or 'f1', got {metric!r}")

    def fn(trajectory: Trajectory) -> Reward:
        answer, gold = last_answer(trajectory), trajectory.task.metadata["answers"]
        em = exact_match(answer, gold) if answer is not None else 0.0
        f1 = f1_score(answer, gold) if answer is not None else 0.0
        components = {"em": em, "f1": f1, "answered": float(answer is not None)}
        return Reward([0.0] * len(trajectory.turns), em if metric == "em" else f1, components)

    return fn


def substring_oracle(information: str, answers: list[str]) -> bool:
    """ReSeek's training code: a gold answer, lower-cased and stripped, occurs in the lower-cased information."""
    return any(a.lower().strip() in information.lower() for a in answers)


def judgment_reward(
    said_yes: bool,
    ideal_yes: bool,
    answer_right: bool,
    correct: float,
    wrong_yes: float,
    wrong_no: float,
    answer_bonus: float,
) -> float:
    """ReSeek's reward for one judgment against its ideal."""
    if said_yes == ideal_yes:
        return correct + (answer_bonus if answer_right else 0.0)
    return wrong_yes if said_yes else wrong_no


def aggregate(rewards: list[float], how: str, cap: float) -> list[float]:
    """Per-item shares whose sum is the episode's judge reward: the sum, the mean, or the sum clipped to +-cap."""
    if not rewards:
        return []
    if how == "sum":
        return list(rewards)
    if how == "mean":
        return [r / len(rewards) for r in rewards]
    total = sum(rewards)  # "cap": scale every share alike, so the placement stays proportional
    scale = min(1.0, cap / abs(total)) if total else 1.0
    return [r * scale for r in rewards]


_RERANKERS: dict[str, object] = {}


def reranker_useful(model: str, threshold: float, answers: list[str], information: str) -> bool:
    """Whether a cross-encoder scores some (gold answer, information) pair above `threshold`.

    As in ReSeek's code, the whole information block is one text. Needs sentence-transformers.
    """
    if model not in _RERANKERS:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as e:
            raise ImportError(
                "the judge oracle 'reranker' needs sentence-transformers: pip install sentence-transformers"
            ) from e
        _RERANKERS[model] = CrossEncoder(model)
    scores = _RERANKERS[model].predict([(a, information) for a in answers])
    return bool(max(float(s) for s in scores) > threshold)


@register_reward("search_judge")
def judge_reward(
    oracle: str = "answer",
    correct: float = 0.3,
    wrong_yes: float = -0.6,
    wrong_no: float = -0.3,
    answer_bonus: float = 0.0,
    unjudged: float = 0.0,
    aggregate_by: str = "mean",
    cap: float = 0.5,
    require_answer: bool = True,
    pairing: str = "adjacent",
    yes_if_answer_right: bool = False,
    rate_empty: bool = True,
    threshold: float = 0.7,
    reranker_model: str = "BAAI/bge-reranker-v2-m3",
):
    """Process: ReSeek's judge reward, each judgment's share on the judge's turn.

    unjudged: reward for information nobody judged (on its search turn); require_answer: no
    judge reward in an episode without an answer (ReSeek's code); pairing: "adjacent" or
    ReSeek's code's "next"; yes_if_answer_right: ReSeek's code's rule that a Yes is right
    whenever the final answer is; rate_empty: whether a search that returned no passage is rated at all
    (a garbled query returns one at will, and a No on it is always right: a policy farms it);
    threshold, reranker_model: the reranker oracle's.
    """
    if oracle not in ("answer", "substring", "gold_doc", "reranker"):
        raise ValueError(f"oracle must be 'answer', 'substring', 'gold_doc' or 'reranker', got {oracle!r}")
    if aggregate_by not in ("sum", "mean", "cap"):
        raise ValueError(f"aggregate_by must be 'sum', 'mean' or 'cap', got {aggregate_by!r}")
    if pairing not in ("adjacent", "next"):
        raise ValueError(f"pairing must be 'adjacent' or 'next', got {pairing!r}")
    holds_answer = substring_oracle if oracle == "substring" else contains_answer

    def fn(trajectory: Trajectory) -> Reward:
        turns, meta = trajectory.turns, trajectory.task.metadata
        answer = last_answer(trajectory)
        answer_right = answer is not None and exact_match(answer, meta["answers"]) == 1.0
        gold_docs = set(meta.get("gold_doc_ids") or [])
        if oracle == "gold_doc" and not gold_docs:
            raise ValueError("judge oracle 'gold_doc' needs the task's gold_doc_ids (generated worlds have them)")
        searches = [
            t
            for t, turn in enumerate(turns)
            if turn.info.get("action") == "search" and (rate_empty or turn.info["doc_ids"])
        ]
        pairs = [(s, j) for s, j in judge_pairs(trajectory, pairing) if s in searches]
        said_yes = {s: turns[j].info["verdict"] == "yes" for s, j in pairs}  # search turn -> its judgment

        # The ideal judgment of each search's information, by each oracle that can be asked.
        ideals: dict[str, dict[int, bool]] = {"correctness": {}}
        if oracle == "reranker" or gold_docs:
            ideals["utility"] = {}
        for s in searches:
            info = turns[s].info
            ideals["correctness"][s] = holds_answer(info["information"], meta["answers"])
            if oracle == "reranker":
                ideals["utility"][s] = reranker_useful(reranker_model, threshold, meta["answers"], info["information"])
            elif gold_docs:
                ideals["utility"][s] = bool(gold_docs & set(info["doc_ids"]))
        chosen = ideals["correctness" if oracle in ("answer", "substring") else "utility"]

        # (turn the share goes on, search it is about): a judgment's on the judge's turn,
        # unjudged information's on its search.
        items = [(j, s) for s, j in pairs] + [(s, s) for s in searches if s not in said_yes]

        def shares(ideal: dict[int, bool]) -> list[float]:
            if answer is None and require_answer:
                return [0.0] * len(items)
            raw = [
                judgment_reward(
                    said_yes[s],
                    ideal[s] or (yes_if_answer_right and answer_right and said_yes[s]),
                    answer_right,
                    correct,
                    wrong_yes,
                    wrong_no,
                    answer_bonus,
                )
                if s in said_yes
                else unjudged
                for _, s in items
            ]
            return aggregate(raw, aggregate_by, cap)

        process = [0.0] * len(turns)
        for (t, _), share in zip(items, shares(chosen)):
            process[t] += share
        components = {name: sum(shares(ideal)) for name, ideal in ideals.items()}
        components.update(
            {
                "searches": float(len(searches)),
                "pairs": float(len(pairs)),
                "correct_judgments": float(sum(said_yes[s] == chosen[s] for s in said_yes)),
                "yes_judgments": float(sum(said_yes.values())),
            }
        )
        return Reward(process, 0.0, components)

    return fn


def well_formed(action: str, require_think: bool = False) -> bool:
    """An optional (or required) <think> block, then exactly one action, and nothing else."""
    match = _WELL_FORMED.fullmatch(action)
    return (
        bool(match)
        and (match.group(1) is not None or not require_think)
        and not any(tag in action for tag in _OBSERVATION_TAGS)
    )


@register_reward("search_format")
def format_reward(penalty: float = 0.2, require_think: bool = False):
    """Process: -penalty on each turn the env found invalid or that is not well formed; outcome:
    -penalty without an answer."""

    def fn(trajectory: Trajectory) -> Reward:
        bad = [bool(t.info.get("invalid")) or not well_formed(t.action, require_think) for t in trajectory.turns]
        answered = last_answer(trajectory) is not None
        return Reward(
            [-penalty if b else 0.0 for b in bad], 0.0 if answered else -penalty, {"malformed_turns": float(sum(bad))}
        )

    return fn


@register_reward("search_found")
def found_reward(bonus: float = 0.5):
    """Process: `bonus` on the turn of the search that brings what the question needs (the `useful` oracle:
    a gold passage where the task names them), when it is the episode's first search or every search
    before it brought passages and was judged No rightly; at most once an episode.

    It pays a search that finds, and a re-search after a right No exactly as much as a first search
    that finds: a correction earns its reward on the turn that makes it, long before the answer, and
    missing on purpose gains nothing. A search that returned nothing never leads up to it (a garbled
    query returns nothing at will), nor does a No on useful passages or a search left unjudged.
    """

    def fn(trajectory: Trajectory) -> Reward:
        turns, meta = trajectory.turns, trajectory.task.metadata
        gold_docs, answers = set(meta.get("gold_doc_ids") or []), meta["answers"]
        verdicts = {s: turns[j].info["verdict"] for s, j in judge_pairs(trajectory)}
        process = [0.0] * len(turns)
        for t, turn in enumerate(turns):
            if turn.info.get("action") != "search":
                continue
            if useful(turn.info, gold_docs, answers):
                process[t] = bonus
                break
            if not turn.info["doc_ids"] or verdicts.get(t) != "no":  # the path to a paid search is broken
                break
        return Reward(process, 0.0, {"found": float(any(process))})

    return fn
