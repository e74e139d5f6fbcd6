"""Scripted demonstrations for a warm start: an expert plays the real env (real BM25 retrieval).

The expert knows each question's gold passages (generated worlds name one per hop), so
it searches each hop's entity by name, judges the information, and answers. Demos come
in the two shapes of the confidence/critique format, with AdvChain's corrections:

    keep  the first call was right and is kept: search the right entity, restate in a <think>
          the sentence of the passage the next step needs (ReSeek asks for reasoning on new
          information; `demo_reasoning: false` leaves it out, for tiny models), <judge>Yes</judge>.
          A `hesitation` share first doubts the passage ("Is this X? Yes.") and makes the
          right call anyway (AdvChain's hesitation-correction).
    fix   at one hop the first search is for a tempting wrong entity (a namesake when the
          world has one), its information is judged No, and the right search follows
          (AdvChain's temptation-correction).

Where the question names a person by surname and occupation ("Rutaru the novelist", a
`by_occupation` world), the expert searches the surname alone; when a namesake's passage
comes back it judges No and searches the question's whole phrase (both queries copy the
question from the same word on); where the env skips passages already shown
(`new_passages`), it repeats the surname instead, the cheapest query that brings the
next passage. Whether that first search misses is up to the retriever, so the demos
hold both shapes without a fix_hop. The same holds where an article is split into
sections (a `sections` world with `new_passages`): when the name's search brings a
section that does not state what the question asks, the expert judges No and repeats
the search, which brings the next section.

Queries and answers sit between spaces, as in Search-R1's "<search> query </search>": a
name then starts with the same space-prefixed token as in the question or the passage it
is copied from, so copying it is a token-for-token copy.

Turns that are the mistake itself carry info["demo"] = "mistake", so a trainer can keep
them as context without learning to make them.
"""

from __future__ import annotations

import random
import re

from envs.base import Task, Trajectory, Turn, solved
from envs.search.qa import contains_answer
from envs.search.retrieval import read_corpus, split_contents

_DOC_HEADER = re.compile(r"Doc \d+\(Title: [^\n]*?\) ")  # "Doc 1(Title: "X") " before each passage


def _titles(corpus) -> dict[str, str]:
    ids, contents = read_corpus(corpus)
    return {i: split_contents(c)[0].strip('"') for i, c in zip(ids, contents)}


def _by_word(titles: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """(doc id, title) of the titles holding each word: namesakes without a scan of every title."""
    index: dict[str, list[tuple[str, str]]] = {}
    for i, t in titles.items():
        for word in set(t.split()):
            index.setdefault(word, []).append((i, t))
    return index


def _tempting(right: str, titles: dict[str, str], by_word: dict, avoid: set[str], rng: random.Random) -> str:
    """A wrong entity to search: one sharing a word with the right one (a namesake) if there is one."""
    namesakes = sorted({t for w in set(right.split()) for i, t in by_word.get(w, []) if i not in avoid and t != right})
    return rng.choice(namesakes) if namesakes else rng.choice(sorted(t for i, t in titles.items() if i not in avoid))


def occupation_before(title: str, question: str) -> str:
    """The occupation when `question` names the person `title` as "<surname> the <occupation>" (a `by_occupation`
    world), else ""."""
    parts = title.split(" ")
    if len(parts) != 2 or title in question:
        return ""
    found = re.search(rf"\b{re.escape(parts[1])} the (\w+)\b", question)
    return found.group(1) if found else ""


def play(
    env,
    task: Task,
    titles: dict[str, str],
    by_word: dict,
    fix_hop: int | None,
    hesitate: bool,
    reasoning: bool,
    rng: random.Random,
) -> Trajectory | None:
    """One scripted episode, or None when the agent could not have seen what it needs (it would be guessing)."""
    trajectory = Trajectory(task)
    env.reset(task)

    def act(action: str, mistake: bool = False) -> dict:
        result = env.step(action)
        info = dict(result.info, demo="mistake" if mistake else "expert")
        trajectory.turns.append(Turn(action, result.observation, info))
        return info

    gold = task.metadata["gold_doc_ids"]
    question = task.metadata["question"]
    for hop, doc_id in enumerate(gold):
        detail = occupation_before(titles[doc_id], question)
        if detail:
            surname = titles[doc_id].split(" ")[1]
            info = act(f"<search> {surname} </search>")
            if doc_id not in info["doc_ids"]:
                act((f"<think>This is not {surname} the {detail}.</think>" if reasoning else "") + "<judge>No</judge>")
                info = act(f"<search> {surname if env.new_passages else surname + ' the ' + detail} </search>")
        elif hop == fix_hop:
            wrong = _tempting(titles[doc_id], titles, by_word, set(gold), rng)
            info = act(f"<search> {wrong} </search>", mistake=True)
            if set(gold) & set(info["doc_ids"]) or contains_answer(info["information"], task.metadata["answers"]):
                return None  # the "wrong" search found what was needed after all: not a mistake to correct
            act((f"<think>{wrong} is not {titles[doc_id]}.</think>" if reasoning else "") + "<judge>No</judge>")
        if not detail:
            info = act(f"<search> {titles[doc_id]} </search>")
            # another section of the article came first: the next one
            if doc_id not in info["doc_ids"] and env.new_passages:
                act(
                    ("<think>This does not say what the question asks.</think>" if reasoning else "")
                    + "<judge>No</judge>"
                )
                info = act(f"<search> {titles[doc_id]} </search>")
        # What the next step needs must be in what the agent saw (observations are cut to max_obs_words).
        needed = [task.metadata["answers"][0]] if hop == len(gold) - 1 else [titles[gold[hop + 1]]]
        if doc_id not in info["doc_ids"] or not contains_answer(info["information"], needed):
            return None
        # ReSeek asks for reasoning on new information: the expert restates the sentence it needs.
        text = _DOC_HEADER.sub("", info["information"])
        sentence = next((s for s in re.split(r"(?<=\.) ", text) if contains_answer(s, needed)), None)
        if sentence is None:  # only the passage's title names it: nothing to restate
            return None
        named = f"{titles[doc_id].split(' ')[1]} the {detail}" if detail else titles[doc_id]  # as the question names it
        thought = (f"Is this {named}? Yes. " if hesitate else "") + (sentence.strip() if reasoning else "")
        act((f"<think>{thought.strip()}</think>" if thought else "") + "<judge>Yes</judge>")
    info = act(f"<answer> {task.metadata['answers'][0]} </answer>")
    return trajectory if solved(info) else None


def demonstrations(
    env, tasks: list[Task], corpus, reasoning: bool, n: int, seed: int, keep_share: float, hesitation: float
) -> list[Trajectory]:
    """`n` demos on the train `tasks` (played in `env`, titles read from `corpus`), a `keep_share` of them
    keep-shaped (module docstring)."""
    tasks = [t for t in tasks if t.metadata.get("gold_doc_ids")]
    if not tasks:
        raise ValueError("search demos need questions with gold_doc_ids (a generated world or a world directory)")
    titles, rng = _titles(corpus), random.Random(seed)
    by_word = _by_word(titles)
    out: list[Trajectory] = []
    for _ in range(4 * n):  # bounded: retrieval misses skip a question
        if len(out) == n:
            break
        task = tasks[rng.randrange(len(tasks))]
        fix_hop = rng.randrange(len(task.metadata["gold_doc_ids"])) if rng.random() >= keep_share else None
        hesitate = fix_hop is None and rng.random() < hesitation
        trajectory = play(env, task, titles, by_word, fix_hop, hesitate, reasoning, rng)
        if trajectory is not None:
            out.append(trajectory)
    return out
