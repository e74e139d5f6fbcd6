"""Search-agent episodes (ReSeek): search, judge the information, answer.

    python -m rl train configs/search.yaml                                    # a generated world, local BM25
    python -m rl train configs/search.yaml env.params.retriever=http://127.0.0.1:8000   # a shared server

Modules: env.py (the grammar and the episode rules), bm25.py (the local index),
retrieval.py (corpus format, server client), server.py (Search-R1's /retrieve API),
world.py (fictional question worlds), qa.py (QA files, answer metrics), demos.py
(scripted expert episodes for an SFT warm start); the rewards
are in rewards/search.py. `python -m envs.search make-world | serve` (__main__.py)
writes a world or starts a server.

Questions come from a generated world (default), a world directory, Bamboogle or
any QA file; passages from the local BM25 index of a corpus or from a retrieval
server. Generated worlds and BM25 indexes are cached on disk (`cache_dir`), and
the index or client is shared by all envs of a process, so `make_env` is cheap.
Train and eval questions of one world share its corpus; eval holds out questions
(by a hash of their id), not entities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from envs.base import Task
from envs.registry import EnvSpec
from envs.search import demos, world
from envs.search.env import ANSWER_NOW, INVALID, SearchEnv, make_prompt
from envs.search.metrics import search_metrics
from envs.search.qa import BAMBOOGLE, load_questions
from envs.search.retrieval import Batcher, RetrievalClient, default_cache_dir, read_corpus
from envs.search.world import WorldConfig, write_world


@dataclass
class SearchParams:
    #: questions: "world" (generate from the world_* knobs), "bamboogle", a world directory, or a QA JSONL/parquet file
    data: str = "world"
    #: eval questions, same kinds as data; "" = hold out eval_fraction of data
    eval_data: str = ""
    #: share of data held out for eval (by a hash of the question id) when eval_data is ""
    eval_fraction: float = 0.2
    #: at most this many tasks per split (0 = all)
    max_tasks: int = 0
    #: corpus JSONL for the bm25 retriever; "" = the world's own corpus
    corpus: str = ""
    #: "bm25" (local index over corpus) or a Search-R1 retrieval server URL, e.g. http://127.0.0.1:8000
    retriever: str = "bm25"
    #: passages per search
    topk: int = 3
    #: searches (invalid actions count too) before one answer-only turn is forced
    max_searches: int = 4
    #: "soft": information stays in context; "hard": a preview until <judge>Yes</judge> releases it
    judge_mode: Literal["soft", "hard"] = "soft"
    #: hard mode: words of each passage in the preview
    preview_words: int = 8
    #: words of passage text per observation, split evenly across the passages
    max_obs_words: int = 300
    #: info["score"] of the answer turn: "em" or "f1"
    score: Literal["em", "f1"] = "em"
    #: a search skips passages the episode has already shown (the next ones in rank order): a search repeated after a No
    #: brings the next passage
    new_passages: bool = False
    #: "reseek" (ReSeek's instructions, for instruct models), "reseek_code" (the same as its code lays them out:
    #: indented), or "short" ("Question: ...", for tiny models)
    prompt: Literal["reseek", "reseek_code", "short"] = "reseek"
    #: system message: "none" (the chat template's default, e.g. Qwen's) or "reseek" ("You are a helpful and harmless
    #: assistant.")
    system: Literal["none", "reseek"] = "none"
    #: retrieval server: seconds before a request is abandoned
    timeout_s: float = 10.0
    #: retrieval server: retries of a failed request before the episode fails
    retries: int = 2
    #: retrieval server: requests waiting for an answer at once
    max_in_flight: int = 8
    #: retrieval server: requests per second at most (0 = no limit)
    rate_per_s: float = 0.0
    #: concurrent episodes' searches gathered for up to this long into one retrieval call (0 = one call per search)
    batch_ms: float = 2.0
    #: generated worlds and BM25 indexes; "" = $SELFCORRECT_CACHE/search or ~/.cache/selfcorrect/search
    cache_dir: str = ""
    #: data "world": the seed everything in the world follows from
    world_seed: int = 0
    #: data "world": people (cities, orgs, works and countries scale with it)
    world_people: int = 60
    #: data "world": hop counts (1-4) of the questions
    world_hops: list[int] = field(default_factory=lambda: [1, 2])
    #: data "world": namesakes per person (shared surname and one attribute)
    world_distractors: int = 0
    #: data "world": distinct questions to generate
    world_questions: int = 200
    #: data "world": relations questions may follow, e.g. [born_in]; [] = all
    world_relations: list[str] = field(default_factory=list)
    #: data "world": name people as "Rutaru the poet", namesakes share only the surname (envs/search/world.py)
    world_by_occupation: bool = False
    #: data "world": a person's article is two passages under one title, life and career (envs/search/world.py)
    world_sections: bool = False
    #: scripted SFT demos restate the sentence they rely on in a <think> before judging (ReSeek)
    demo_reasoning: bool = True


def _cache(p: SearchParams) -> Path:
    return Path(p.cache_dir) if p.cache_dir else default_cache_dir()


def _generator_source() -> str:
    return Path(world.__file__).read_text(encoding="utf-8")


def world_dir(p: SearchParams) -> Path:
    """The generated world of `p`'s knobs, written once under the cache directory.

    The cache key covers the generator's code too: a world written by other code is not reused.
    """
    cfg = WorldConfig(
        p.world_seed,
        p.world_people,
        list(p.world_hops),
        p.world_distractors,
        p.world_questions,
        list(p.world_relations),
        p.world_by_occupation,
        p.world_sections,
    )
    key = hashlib.sha256(
        (json.dumps(dataclasses.asdict(cfg), sort_keys=True) + _generator_source()).encode()
    ).hexdigest()[:16]
    out = _cache(p) / "worlds" / key
    if not (out / "questions.jsonl").exists():
        write_world(cfg, out)
    return out


def _questions_and_corpus(data: str, p: SearchParams) -> tuple[Path, Path | None]:
    if data == "world":
        data = str(world_dir(p))
    if data == "bamboogle":
        return BAMBOOGLE, None
    path = Path(data)
    if path.is_dir():
        return path / "questions.jsonl", path / "corpus.jsonl"
    return path, None


def corpus_path(p: SearchParams) -> Path | None:
    return Path(p.corpus) if p.corpus else _questions_and_corpus(p.data, p)[1]


def make_retriever(
    spec: str,
    corpus: str | Path | None,
    cache_dir: str | Path | None,
    timeout_s: float = 10.0,
    retries: int = 2,
    max_in_flight: int = 8,
    rate_per_s: float = 0.0,
):
    """`spec` "bm25" gives a local BM25Index over `corpus`; an http(s) URL gives a RetrievalClient."""
    if spec.startswith(("http://", "https://")):
        return RetrievalClient(spec, timeout_s, retries, max_in_flight, rate_per_s)
    if spec != "bm25":
        raise ValueError(f"retriever must be 'bm25' or a server URL (http://host:port), got {spec!r}")
    if not corpus:
        raise ValueError("retriever 'bm25' needs a corpus JSONL file")
    from envs.search.bm25 import BM25Index  # bm25s and numpy load only when used (rewards import this package)

    return BM25Index(corpus, cache_dir)


_RETRIEVERS: dict[tuple, object] = {}  # one index or client per process, shared by every env


def shared_retriever(p: SearchParams):
    corpus = corpus_path(p)
    key = (p.retriever, str(corpus), str(_cache(p)), p.timeout_s, p.retries, p.max_in_flight, p.rate_per_s, p.batch_ms)
    if key not in _RETRIEVERS:
        if p.retriever == "bm25" and corpus is None:
            raise ValueError(
                f"data {p.data!r} has no corpus of its own: give corpus=PATH "
                "(a Search-R1 JSONL) or retriever=URL of a server"
            )
        retriever = make_retriever(
            p.retriever, corpus, _cache(p), p.timeout_s, p.retries, p.max_in_flight, p.rate_per_s
        )
        _RETRIEVERS[key] = Batcher(retriever, p.batch_ms / 1000) if p.batch_ms > 0 else retriever
    return _RETRIEVERS[key]


def make_env(p: SearchParams) -> SearchEnv:
    return SearchEnv(
        shared_retriever(p),
        p.topk,
        p.max_searches,
        p.judge_mode,
        p.preview_words,
        p.max_obs_words,
        p.score,
        p.new_passages,
    )


def _held_out(question_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(question_id.encode()).hexdigest()[:8], 16) < fraction * 16**8


def load_tasks(p: SearchParams, split: str) -> list[Task]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    # Reject bad options now (the trainer loads tasks first), not in every episode's make_env.
    SearchEnv(None, p.topk, p.max_searches, p.judge_mode, p.preview_words, p.max_obs_words, p.score)
    make_prompt("", p.prompt, p.system)
    if p.retriever != "bm25" and not p.retriever.startswith(("http://", "https://")):
        raise ValueError(f"retriever must be 'bm25' or a server URL (http://host:port), got {p.retriever!r}")
    if split == "eval" and p.eval_data:
        questions_file, _ = _questions_and_corpus(p.eval_data, p)
        records = load_questions(questions_file)
    else:
        questions_file, _ = _questions_and_corpus(p.data, p)
        records = [
            r for r in load_questions(questions_file) if _held_out(r["id"], p.eval_fraction) == (split == "eval")
        ]
    if p.max_tasks:
        records = records[: p.max_tasks]
    source = questions_file.parent.name if questions_file.name == "questions.jsonl" else questions_file.stem
    return [
        Task(
            f"{source}-{r['id']}",
            make_prompt(r["question"], p.prompt, p.system),
            {"question": r["question"], "answers": r["answers"], "hops": r["hops"], "gold_doc_ids": r["gold_doc_ids"]},
        )
        for r in records
    ]


def prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def sample_text(p: SearchParams) -> list[str]:
    """Prompts, answers, passages and every tag and fixed message, for a tiny model's tokenizer."""
    tasks = load_tasks(p, "train") + load_tasks(p, "eval")
    texts = [prompt_text(t.prompt) for t in tasks] + [" ".join(t.metadata["answers"]) for t in tasks]
    corpus = corpus_path(p)
    if corpus is not None and corpus.exists():
        texts += read_corpus(corpus)[1][:5000]
    texts += [
        INVALID,
        ANSWER_NOW,
        prompt_text(make_prompt("", p.prompt, p.system)),
        "<think> </think> <search> </search> <information> Doc 1(Title: ) </information> <preview> </preview> "
        "<judge>Yes</judge> <judge>No</judge> <answer> </answer>",
    ]
    return texts


def demonstrations(p: SearchParams, n: int, seed: int, keep_share: float, hesitation: float) -> list:
    """Scripted keep and fix episodes on the train questions (envs/search/demos.py)."""
    return demos.demonstrations(
        make_env(p), load_tasks(p, "train"), corpus_path(p), p.demo_reasoning, n, seed, keep_share, hesitation
    )


ENV_SPEC = EnvSpec(
    SearchParams,
    make_env,
    load_tasks,
    sample_text,
    demonstrations,
    metrics=search_metrics,
    headline=(
        "em",
        "f1",
        "judge_accuracy",
        "recovery",
        "false_rejection",
        "research_after_no",
        "searches_per_episode",
        "answered",
        "reward/mean",
    ),
)
