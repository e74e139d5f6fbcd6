"""The search environment: ReSeek's grammar (Search-R1 plus a JUDGE action).

One agent turn is one action. Generation stops right after the first closing tag
of an action, so a turn is free text (reasoning, normally inside <think>...</think>)
followed by exactly one of:

    <search>query</search>    the env answers with the top-k passages:
                              "\\n\\n<information>Doc 1(Title: ...) text\\nDoc 2(...)...</information>\\n\\n"
    <judge>Yes|No</judge>     rates the information just received; calls no tool. Allowed only as the
                              turn right after a search (so each judgment has exactly one information
                              block to be about); it does not use up a search.
    <answer>text</answer>     ends the episode; info["score"] is EM (or F1) against the gold answers.

With `new_passages`, a search skips the passages this episode has already shown and
returns the next ones in the retriever's order: searching again after a No brings
something new, as the next page of results does for a person.

Anything else (no complete action, an empty query, a judgment that is not Yes/No or
follows no information) gets the fixed INVALID message and uses up a search, so an
episode has at most 2 * max_searches + 1 turns. Once the budget is spent the
observation says so, and only the judgment of the last information and one answer
remain; any other action ends the episode unanswered (score 0).

JUDGE modes. The rollout is append-only: tokens the policy has seen cannot be taken
out of its context. So the two modes differ in what is shown, not in what is deleted:

    soft (default, ReSeek's code and paper v3): the full information is shown at once and stays;
         the judgment's observation is empty.
    hard (paper v1, "a No omits o_t"): a search shows only a preview (each passage's title and
         first `preview_words` words, in <preview> tags). <judge>Yes</judge> releases the full
         information as its observation; <judge>No</judge> releases nothing, so rejected text
         never enters the context the next turns are sampled from. Judging from a preview is
         what a person does on a results page; the turn's info records what was shown.

Each turn's info is JSON and enough to re-score the episode offline: the query, the
retrieved ids and scores, the information text (capped, as the policy saw it or
would have after a Yes), whether it contains a gold answer, whether a gold passage
was retrieved, and for a judgment the verdict and the turn of the search it rates.
"""

from __future__ import annotations

import re

from envs.base import StepResult, Task
from envs.search.qa import contains_answer, exact_match, f1_score
from envs.search.retrieval import Hit, split_contents

INVALID = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and </search>. "
    "If I want to judge the information I just received, I should put Yes or No between <judge> and </judge>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again.\n"
)
ANSWER_NOW = (
    "\nI have used all my searches, so my next action must be the final answer between <answer> and </answer>.\n"
)
RESEEK_INSTRUCTIONS = (
    "Answer the given question step by step.\n"
    "Instructions:\n"
    "1. First, conduct reasoning inside <think> and </think> tags whenever you receive new information.\n"
    "2. If you need external knowledge, you can search using <search>query</search>.\n"
    "3. When you receive search results, evaluate their usefulness and put "
    "your judgment inside <judge>Yes</judge> or <judge>No</judge> tags.\n"
    "4. Based on your judgment, follow these strict rules:\n"
    "a. If the information is useful AND you now have sufficient information "
    "to provide a complete final answer, proceed directly to step 5.\n"
    "b. If the information is useful BUT you still need more "
    "details, you MUST search again with <search>...</search>.\n"
    "c. If the information is not useful, you MUST search again with "
    "<search>...</search>. You MUST NOT provide an answer in this case.\n"
    "5. Provide your final answer in <answer>...</answer> tags. The <answer> tag marks the end of the task. "
    "After providing the <answer>, you MUST stop and generate no further text.\n\n"
    "Question: "
)
# ReSeek's utils/preprocess_reseek_dataset.py writes the instructions as an indented Python string, so every
# line after the first carries four spaces; "reseek" is the same text flush left.
RESEEK_CODE_INSTRUCTIONS = "\n".join(
    line if n == 0 or not line else "    " + line for n, line in enumerate(RESEEK_INSTRUCTIONS.split("\n"))
)
RESEEK_SYSTEM = "You are a helpful and harmless assistant."  # ReSeek's system message (same script)
PROMPTS = ("reseek", "reseek_code", "short")
SYSTEMS = {"none": "", "reseek": RESEEK_SYSTEM}
STOP_STRINGS = ["</search>", "</judge>", "</answer>"]
_ACTION = re.compile(r"<(search|judge|answer)>(.*?)</\1>", re.S)


def parse_action(text: str) -> tuple[str, str]:
    """(kind, content) of the first action the text completes, or ("invalid", why).

    "First" is by closing tag, as the rollout cuts generation at the first stop string.
    """
    match = min(_ACTION.finditer(text), key=lambda m: m.end(), default=None)
    if match is None:
        return "invalid", "no complete <search>, <judge> or <answer> action"
    kind, content = match.group(1), match.group(2).strip()
    if kind == "search" and not content:
        return "invalid", "empty search query"
    if kind == "judge":
        if content.lower() not in ("yes", "no"):
            return "invalid", f"judgment {content[:40]!r} is not Yes or No"
        content = content.lower()
    return kind, content


def format_passages(hits: list[Hit], max_words: int, preview_words: int = 0) -> str:
    """Search-R1's "Doc i(Title: T) text" lines; `max_words` of text in all, split evenly across passages.

    With `preview_words`, each passage shows only that many words (hard JUDGE mode's preview).
    """
    if not hits:
        return "No passage matches the query.\n"
    per_doc = max(1, preview_words or max_words // len(hits))
    lines = []
    for i, hit in enumerate(hits, 1):
        title, text = split_contents(hit["document"]["contents"])
        words = text.split()
        body = " ".join(words[:per_doc]) + (" ..." if len(words) > per_doc else "")
        lines.append(f"Doc {i}(Title: {title}) {body}\n")
    return "".join(lines)


def make_prompt(question: str, style: str, system: str = "none") -> str | list[dict]:
    """The first prompt: text, or [system, user] messages when a system message is named."""
    if style not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {style!r}")
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {tuple(SYSTEMS)}, got {system!r}")
    text = (
        {"reseek": RESEEK_INSTRUCTIONS, "reseek_code": RESEEK_CODE_INSTRUCTIONS, "short": "Question: "}[style]
        + question
        + "\n"
    )
    return (
        [{"role": "system", "content": SYSTEMS[system]}, {"role": "user", "content": text}] if SYSTEMS[system] else text
    )


class SearchEnv:
    """One episode at a time; the retriever (a BM25Index or RetrievalClient) is shared across envs."""

    stop_strings = STOP_STRINGS

    def __init__(
        self,
        retriever,
        topk: int = 3,
        max_searches: int = 4,
        judge_mode: str = "soft",
        preview_words: int = 8,
        max_obs_words: int = 300,
        score: str = "em",
        new_passages: bool = False,
    ):
        if judge_mode not in ("soft", "hard"):
            raise ValueError(f"judge_mode must be 'soft' or 'hard', got {judge_mode!r}")
        if score not in ("em", "f1"):
            raise ValueError(f"score must be 'em' or 'f1', got {score!r}")
        if topk < 1 or max_searches < 0:
            raise ValueError(f"topk must be >= 1 and max_searches >= 0, got {topk} and {max_searches}")
        self.retriever, self.topk, self.max_searches = retriever, topk, max_searches
        self.judge_mode, self.preview_words, self.max_obs_words, self.score = (
            judge_mode,
            preview_words,
            max_obs_words,
            score,
        )
        self.new_passages = new_passages

    def reset(self, task: Task):
        self.answers = task.metadata["answers"]
        self.gold_doc_ids = set(task.metadata.get("gold_doc_ids") or [])
        self.searches_left = self.max_searches
        self.pending: dict | None = None  # the last search, while a judgment of it is still allowed
        self.shown: set[str] = set()  # ids of the passages searches have returned (new_passages skips them)
        self.turn = 0
        return task.prompt

    def step(self, action: str) -> StepResult:
        turn, self.turn = self.turn, self.turn + 1
        kind, content = parse_action(action)
        if kind == "answer":
            em, f1 = exact_match(content, self.answers), f1_score(content, self.answers)
            return StepResult(
                "",
                True,
                {"action": "answer", "answer": content, "em": em, "f1": f1, "score": em if self.score == "em" else f1},
            )
        if kind == "judge" and self.pending is None:
            kind, content = "invalid", "a judgment must come right after a search's information"
        if self.searches_left == 0 and kind != "judge":  # the forced answer-only turn
            reason = "the search budget is used up: only an answer was allowed"
            return StepResult("", True, {"action": "invalid", "invalid": True, "reason": reason, "score": 0.0})
        if kind == "judge":
            return self._judge(content == "yes")
        self.pending = None  # any other action breaks the adjacency a judgment needs
        self.searches_left -= 1
        budget_note = ANSWER_NOW if self.searches_left == 0 else ""
        if kind == "invalid":
            return StepResult(
                INVALID + budget_note, False, {"action": "invalid", "invalid": True, "reason": content, "score": 0.0}
            )
        return self._search(content, turn, budget_note)

    def _search(self, query: str, turn: int, budget_note: str) -> StepResult:
        if self.new_passages:  # ask for enough to have topk left after the shown ones are dropped
            hits = [
                h
                for h in self.retriever.search([query], self.topk + len(self.shown))[0]
                if h["document"]["id"] not in self.shown
            ][: self.topk]
        else:
            hits = self.retriever.search([query], self.topk)[0]
        ids = [h["document"]["id"] for h in hits]
        self.shown.update(ids)
        information = format_passages(hits, self.max_obs_words)
        if self.judge_mode == "soft":
            observation, shown = f"\n\n<information>{information}</information>\n\n", "information"
        else:
            observation, shown = (
                f"\n\n<preview>{format_passages(hits, self.max_obs_words, self.preview_words)}</preview>\n\n",
                "preview",
            )
        self.pending = {"turn": turn, "information": information}
        info = {
            "action": "search",
            "query": query,
            "doc_ids": ids,
            "doc_scores": [h["score"] for h in hits],
            "information": information,  # the capped passages a judgment of this search is about
            "shown": shown,
            "answer_in_information": contains_answer(information, self.answers),
            "gold_doc_retrieved": bool(self.gold_doc_ids & set(ids))
            if self.gold_doc_ids
            else None,  # None: gold passages unknown
            "searches_left": self.searches_left,
            "score": 0.0,
        }
        return StepResult(observation + budget_note, False, info)

    def _judge(self, yes: bool) -> StepResult:
        pending, self.pending = self.pending, None
        info = {"action": "judge", "verdict": "yes" if yes else "no", "judged_turn": pending["turn"], "score": 0.0}
        observation = ""
        if self.judge_mode == "hard":
            info["released"] = yes
            if yes:
                observation = f"\n\n<information>{pending['information']}</information>\n\n"
        return StepResult(observation, False, info)
