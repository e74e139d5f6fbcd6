"""Search episodes: generated worlds, BM25 retrieval quality, the episode rules in both JUDGE modes, QA files."""

import json
import subprocess
import sys
from pathlib import Path

import bm25s
import numpy as np
import pytest

from envs.base import Task
from envs.registry import get_env_spec
from envs.search import SearchParams, corpus_path, load_tasks, make_env, sample_text, shared_retriever
from envs.search.bm25 import BM25Index
from envs.search.env import ANSWER_NOW, INVALID, SearchEnv, format_passages, make_prompt, parse_action
from envs.search.qa import BAMBOOGLE, load_questions
from envs.search.world import CAREER, WorldConfig, build_world, make_questions, write_world

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world with namesake distractors and questions of 1 to 4 hops, and its BM25 index."""
    out = write_world(
        WorldConfig(seed=7, people=80, hops=[1, 2, 3, 4], distractors=2, questions=120),
        tmp_path_factory.mktemp("world"),
    )
    index = BM25Index(out / "corpus.jsonl", out / "cache")
    return out, index, {r["id"]: r["contents"] for r in read_jsonl(out / "corpus.jsonl")}


# ------------------------------------------------------------------ worlds


def test_world_is_a_function_of_its_seed(tmp_path):
    cfg = WorldConfig(seed=1, people=30, hops=[1, 2])
    a, b = write_world(cfg, tmp_path / "a"), write_world(cfg, tmp_path / "b")
    c = write_world(WorldConfig(seed=2, people=30, hops=[1, 2]), tmp_path / "c")
    for name in ("corpus.jsonl", "questions.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_questions_follow_their_gold_passages(world):
    out, _, docs = world
    questions = read_jsonl(out / "questions.jsonl")
    assert len(questions) == 120 and len({q["question"] for q in questions}) == 120
    assert {q["hops"] for q in questions} == {1, 2, 3, 4}
    for q in questions:
        gold = q["gold_doc_ids"]
        assert len(gold) == q["hops"] and len(set(gold)) == len(gold)
        assert q["answers"][0] in docs[gold[-1]]  # the last passage states the answer
        assert q["answers"][0].lower() not in q["question"].lower()
        first_title = docs[gold[0]].split("\n")[0].strip('"')
        assert first_title in q["question"]  # the chain starts at an entity the question names
        for here, nxt in zip(gold, gold[1:]):  # each passage names the entity of the next hop
            assert docs[nxt].split("\n")[0].strip('"') in docs[here]


def test_questions_can_be_limited_to_some_relations():
    entities = build_world(WorldConfig(seed=3, people=20, hops=[1, 2]))
    cfg = WorldConfig(seed=3, people=20, hops=[1, 2], questions=50, relations=["born_in", "mentor"])
    questions = make_questions(entities, cfg)
    assert questions and all(q["question"].startswith(("Where was", "Who was the mentor of")) for q in questions)
    assert any(q["hops"] == 2 for q in questions)  # "Where was the mentor of X born?"
    with pytest.raises(ValueError, match="unknown relations"):
        build_world(WorldConfig(relations=["born"]))


def test_a_world_by_occupation_makes_the_first_search_miss_for_a_reason_the_question_fixes(tmp_path):
    # "Where was Rutaru the poet born?": the surname alone finds either Rutaru; the occupation picks the right one.
    p = SearchParams(
        cache_dir=str(tmp_path),
        world_people=60,
        world_hops=[1],
        world_distractors=1,
        world_questions=80,
        world_relations=["born_in", "birth_year"],
        world_by_occupation=True,
        topk=1,
        max_obs_words=12,
    )
    env, tasks = make_env(p), load_tasks(p, "train") + load_tasks(p, "eval")
    docs = {r["id"]: r["contents"] for r in read_jsonl(corpus_path(p))}
    misses = 0
    for task in tasks:
        gold = task.metadata["gold_doc_ids"][0]
        title, question = docs[gold].split("\n")[0].strip('"'), task.metadata["question"]
        surname, occupation = title.split(" ")[1], docs[gold].split(" is a ")[1].split(".")[0]
        assert title not in question and f" {surname} the {occupation} " in question
        env.reset(task)
        first = env.step(f"<search> {surname} </search>").info
        if gold not in first["doc_ids"]:
            misses += 1
            assert f"is a {occupation}." not in first["information"]  # what came back says it is someone else
        env.reset(task)
        second = env.step(f"<search> {surname} the {occupation} </search>").info
        assert second["doc_ids"] == [gold] and task.metadata["answers"][0] in second["information"]
    assert 0.3 < misses / len(tasks) < 0.7, misses
    people = [
        e for e in build_world(WorldConfig(seed=0, people=10, distractors=2, by_occupation=True)) if e.kind == "person"
    ]
    original, namesakes = people[0], people[1:3]
    assert all(
        d.name.split(" ")[1] == original.name.split(" ")[1] and d.facts["occupation"] != original.facts["occupation"]
        for d in namesakes
    )


def test_a_world_in_sections_makes_half_the_name_searches_bring_the_section_that_does_not_answer(tmp_path):
    # An article split in two under one title: "life" states the birth, "career" does not; the name's search brings
    # either first, and with new_passages the same search brings the other.
    p = SearchParams(
        cache_dir=str(tmp_path),
        world_people=60,
        world_hops=[1],
        world_distractors=1,
        world_questions=80,
        world_relations=["born_in", "birth_year"],
        world_sections=True,
        new_passages=True,
        topk=1,
        max_obs_words=12,
    )
    env, tasks = make_env(p), load_tasks(p, "train") + load_tasks(p, "eval")
    docs = {r["id"]: r["contents"] for r in read_jsonl(corpus_path(p))}
    misses = 0
    for task in tasks:
        gold, answer = task.metadata["gold_doc_ids"][0], task.metadata["answers"][0]
        title = docs[gold].split("\n")[0].strip('"')
        career = docs[gold + CAREER]
        assert title in task.metadata["question"] and career.startswith(f'"{title}"\n{title} is a ')
        assert " born " not in career and answer not in career
        env.reset(task)
        first = env.step(f"<search> {title} </search>").info
        assert first["doc_ids"] in ([gold], [gold + CAREER])
        if first["doc_ids"] != [gold]:
            misses += 1
            assert not first["answer_in_information"]
            second = env.step(f"<search> {title} </search>").info
            assert second["doc_ids"] == [gold] and second["answer_in_information"]
    assert 0.3 < misses / len(tasks) < 0.7, misses
    mentor = make_questions(
        build_world(WorldConfig(seed=0, people=20, hops=[1], relations=["mentor"], questions=5, sections=True)),
        WorldConfig(seed=0, people=20, hops=[1], relations=["mentor"], questions=5, sections=True),
    )
    assert all(q["gold_doc_ids"][0].endswith(CAREER) for q in mentor)  # the mentor is a career fact


def test_sections_leave_the_rest_of_the_world_as_it_was():
    plain, split = (build_world(WorldConfig(seed=3, people=20, distractors=1, sections=s)) for s in (False, True))
    assert [(e.name, {k: v for k, v in e.facts.items() if k != "lead"}) for e in split] == [
        (e.name, e.facts) for e in plain
    ]


def test_distractors_share_a_surname_and_an_attribute():
    entities = build_world(WorldConfig(seed=0, people=10, distractors=2))
    people = [e for e in entities if e.kind == "person"]
    assert len(people) == 30
    original, namesakes = people[0], people[1:3]
    for d, shared in zip(namesakes, ("occupation", "born_in")):
        assert d.name.split(" ")[1] == original.name.split(" ")[1] and d.name != original.name
        assert d.facts[shared] == original.facts[shared]


def test_bm25_recall_at_3_on_one_hop_questions(world, record_property):
    out, index, _ = world
    one_hop = [q for q in read_jsonl(out / "questions.jsonl") if q["hops"] == 1]
    results = index.search([q["question"] for q in one_hop], topk=3)
    found = [q["gold_doc_ids"][0] in [h["document"]["id"] for h in hits] for q, hits in zip(one_hop, results)]
    recall = sum(found) / len(found)
    record_property("bm25_recall_at_3", recall)
    print(
        f"\nBM25 recall@3 of the gold passage, {len(one_hop)} one-hop questions, 2 namesakes per person: {recall:.3f}"
    )
    assert len(one_hop) >= 20 and recall >= 0.9, recall  # floor 0.9: names are unique, but namesakes share surnames


def test_pruned_search_is_exact_bm25(world):
    """The top-k search skips work (MaxScore); its answers must be bm25s's brute-force top k."""
    out, index, _ = world
    queries = [q["question"] for q in read_jsonl(out / "questions.jsonl")]
    queries += [
        "Where was he born?",
        "born born painter",
        "Press Press founded in",
        "river",
    ]  # common words only: no pruning
    vocab = index.bm25.vocab_dict
    for words, hits in zip(
        bm25s.tokenize(queries, stopwords="en", show_progress=False, return_ids=False), index.search(queries, topk=3)
    ):
        every = index.bm25.get_scores([vocab[w] for w in words if w in vocab])  # every passage, scored by bm25s itself
        got = np.array([h["score"] for h in hits])
        assert np.allclose(got, np.sort(every)[::-1][: len(got)], rtol=1e-5)  # the k best scores
        assert np.allclose(got, [every[int(h["document"]["id"])] for h in hits], rtol=1e-5)  # of these passages
        assert len(hits) == min(3, int((every > 0).sum()))


def test_index_is_cached_on_disk_and_unmatched_queries_find_nothing(world):
    out, index, _ = world
    again = BM25Index(out / "corpus.jsonl", out / "cache")
    assert again.path == index.path and len(list((out / "cache" / "index").iterdir())) == 1
    hits = again.search(["Where was zzqx born?", "qqqq zzzz", "the of a"], topk=3)
    assert len(hits[0]) == 3 and all(h["score"] > 0 for h in hits[0])  # "born" matches people
    assert hits[1] == [] and hits[2] == []


def test_make_world_command(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "envs.search",
        "make-world",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
        "--people",
        "20",
        "--hops",
        "2",
        "--questions",
        "10",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    questions = read_jsonl(tmp_path / "questions.jsonl")
    assert len(questions) == 10 and all(q["hops"] == 2 for q in questions)
    assert all(
        set(r) == {"id", "contents"} and r["contents"].startswith('"') for r in read_jsonl(tmp_path / "corpus.jsonl")
    )
    bad = subprocess.run(cmd[:-4] + ["--hops", "5"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "hops must be numbers in 1..4" in bad.stderr


# ------------------------------------------------------------------ the episode


def test_parse_action():
    assert parse_action("<think>who?</think>\n<search> founder of X </search>") == ("search", "founder of X")
    assert parse_action("<judge> YES </judge>") == ("judge", "yes")
    assert parse_action("<answer>Paris</answer><search>q</search>") == ("answer", "Paris")  # the first to close wins
    assert parse_action("<search>a <answer>b</answer>") == ("answer", "b")
    assert parse_action("<judge>maybe</judge>")[0] == "invalid"
    assert parse_action("<search>  </search>")[0] == "invalid"
    assert parse_action("I think the answer is Paris")[0] == "invalid"


def task_for(question):
    return Task(
        question["id"],
        f"Question: {question['question']}\n",
        {"answers": question["answers"], "gold_doc_ids": question["gold_doc_ids"]},
    )


def test_soft_episode_search_judge_answer(world):
    out, index, docs = world
    q = next(q for q in read_jsonl(out / "questions.jsonl") if q["hops"] == 2)
    env = SearchEnv(index)
    assert env.reset(task_for(q)) == f"Question: {q['question']}\n"
    first = env.step(f"<think>two hops</think><search>{q['question']}</search>")
    assert (
        not first.done
        and first.observation.startswith("\n\n<information>Doc 1(Title: ")
        and first.observation.endswith("</information>\n\n")
    )
    assert first.info["doc_ids"] == [h["document"]["id"] for h in index.search([q["question"]], 3)[0]]
    assert first.info["shown"] == "information" and first.info["information"] in first.observation
    assert first.info["gold_doc_retrieved"] == bool(set(q["gold_doc_ids"]) & set(first.info["doc_ids"]))
    judged = env.step("<judge>Yes</judge>")
    assert judged.observation == "" and judged.info == {
        "action": "judge",
        "verdict": "yes",
        "judged_turn": 0,
        "score": 0.0,
    }
    second_entity = docs[q["gold_doc_ids"][1]].split("\n")[0].strip('"')
    second = env.step(f"<search>{second_entity}</search>")
    assert q["gold_doc_ids"][1] in second.info["doc_ids"] and second.info["answer_in_information"]
    assert second.info["searches_left"] == 2
    done = env.step(f"<answer> {q['answers'][0].upper()} </answer>")
    assert done.done and done.observation == "" and done.info["score"] == 1.0 and done.info["em"] == 1.0
    json.dumps([first.info, judged.info, second.info, done.info])  # episodes are logged as JSON


def test_new_passages_never_shows_a_passage_twice_and_brings_the_next_in_rank_order(world):
    out, index, _ = world
    q = read_jsonl(out / "questions.jsonl")[0]
    ranked = [h["document"]["id"] for h in index.search([q["question"]], 4)[0]]
    env = SearchEnv(index, topk=2, new_passages=True)
    env.reset(task_for(q))
    assert env.step(f"<search>{q['question']}</search>").info["doc_ids"] == ranked[:2]
    env.step("<judge>No</judge>")
    assert env.step(f"<search>{q['question']}</search>").info["doc_ids"] == ranked[2:4]  # the same query, the next page
    env.reset(task_for(q))  # a new episode has seen nothing
    assert env.step(f"<search>{q['question']}</search>").info["doc_ids"] == ranked[:2]
    plain = SearchEnv(index, topk=2)
    plain.reset(task_for(q))
    plain.step(f"<search>{q['question']}</search>")
    assert (
        plain.step(f"<search>{q['question']}</search>").info["doc_ids"] == ranked[:2]
    )  # without it: the same passages again


def test_hard_mode_shows_a_preview_and_only_a_yes_releases_the_information(world):
    out, index, _ = world
    q = read_jsonl(out / "questions.jsonl")[0]
    env = SearchEnv(index, judge_mode="hard", preview_words=3)
    env.reset(task_for(q))
    first = env.step(f"<search>{q['question']}</search>")
    assert first.observation.startswith("\n\n<preview>") and first.info["shown"] == "preview"
    body = first.observation.split("<preview>")[1].split("</preview>")[0]
    assert all(len(line.split(") ", 1)[1].split()) <= 4 for line in body.splitlines())  # 3 words and "..."
    assert first.info["information"] not in first.observation
    no = env.step("<judge>No</judge>")
    assert no.observation == "" and no.info["released"] is False
    env.step(f"<search>{q['question']}</search>")
    yes = env.step("<judge>Yes</judge>")
    assert (
        yes.info["released"] is True
        and yes.observation == f"\n\n<information>{first.info['information']}</information>\n\n"
    )


def test_budget_invalid_actions_and_the_forced_answer(world):
    out, index, _ = world
    q = read_jsonl(out / "questions.jsonl")[0]
    env = SearchEnv(index, max_searches=2)
    env.reset(task_for(q))
    lone_judge = env.step("<judge>Yes</judge>")  # nothing to judge yet
    assert (
        lone_judge.observation == INVALID
        and lone_judge.info["invalid"]
        and "right after a search" in lone_judge.info["reason"]
    )
    last = env.step(f"<search>{q['question']}</search>")  # invalid actions use the budget too: this is the last search
    assert last.observation.endswith(ANSWER_NOW) and last.info["searches_left"] == 0
    assert not env.step("<judge>No</judge>").done  # the last information may still be judged
    forced = env.step("<search>one more</search>")
    assert forced.done and forced.info["invalid"] and forced.info["score"] == 0.0 and forced.info["action"] == "invalid"


def test_observations_are_capped_in_words():
    hits = [
        {"document": {"id": str(i), "contents": f'"T{i}"\n' + " ".join(["word"] * 50)}, "score": 1.0} for i in range(3)
    ]
    text = format_passages(hits, max_words=30)
    assert [line.split(") ", 1)[1] for line in text.splitlines()] == [" ".join(["word"] * 10) + " ..."] * 3


# ------------------------------------------------------------------ the registered env and QA files


def test_registered_env_splits_tasks_and_shares_its_index(tmp_path):
    spec = get_env_spec("search")
    p = SearchParams(cache_dir=str(tmp_path), world_people=20, world_questions=50, prompt="short")
    train, evaluation = spec.load_tasks(p, "train"), spec.load_tasks(p, "eval")
    assert len(train) + len(evaluation) == 50 and not {t.id for t in train} & {t.id for t in evaluation}
    assert 3 <= len(evaluation) <= 20  # about eval_fraction = 0.2 of 50
    assert train[0].prompt == f"Question: {train[0].metadata['question']}\n"
    env_a, env_b = make_env(p), make_env(p)
    assert env_a.retriever is env_b.retriever is shared_retriever(p)
    assert (
        len(
            load_tasks(SearchParams(cache_dir=str(tmp_path), world_people=20, world_questions=50, max_tasks=5), "train")
        )
        == 5
    )
    text = " ".join(sample_text(p))
    assert "<judge>Yes</judge>" in text and INVALID in text and train[0].metadata["question"] in text


def test_question_files(tmp_path):
    bamboogle = load_questions(BAMBOOGLE)
    assert len(bamboogle) == 125 and bamboogle[0]["answers"] == ["james madison"] and bamboogle[0]["gold_doc_ids"] == []
    flashrag = tmp_path / "nq.jsonl"
    flashrag.write_text(
        json.dumps(
            {"id": "test_0", "question": "who wrote hamlet", "golden_answers": ["Shakespeare", "William Shakespeare"]}
        )
        + "\n"
    )
    assert load_questions(flashrag) == [
        {
            "id": "test_0",
            "question": "who wrote hamlet",
            "answers": ["Shakespeare", "William Shakespeare"],
            "hops": None,
            "gold_doc_ids": [],
        }
    ]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [
        {
            "data_source": "nq",
            "prompt": [{"role": "user", "content": "Answer the given question. ... Question: who wrote hamlet?\n"}],
            "reward_model": {"style": "rule", "ground_truth": {"target": ["Shakespeare"]}},
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    (record,) = load_questions(tmp_path / "train.parquet")
    assert record["question"] == "who wrote hamlet?" and record["answers"] == ["Shakespeare"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: record 0: no answers"):
        load_questions(tmp_path / "bad.jsonl")


def test_bad_options_fail_when_tasks_load(tmp_path):
    with pytest.raises(ValueError, match="judge_mode must be 'soft' or 'hard'"):
        load_tasks(SearchParams(cache_dir=str(tmp_path), judge_mode="medium"), "train")
    with pytest.raises(ValueError, match="retriever must be 'bm25' or a server URL"):
        load_tasks(SearchParams(cache_dir=str(tmp_path), retriever="faiss"), "train")


def test_qa_file_without_a_corpus_needs_one(tmp_path):
    p = SearchParams(data="bamboogle", cache_dir=str(tmp_path))
    assert len(load_tasks(p, "train")) + len(load_tasks(p, "eval")) == 125
    with pytest.raises(ValueError, match="give corpus=PATH .* or retriever=URL"):
        make_env(p)


def test_reseek_codes_system_message_and_prompt_layout_are_options(tmp_path):
    flush, indented = make_prompt("Who?", "reseek"), make_prompt("Who?", "reseek_code")
    assert flush.startswith("Answer the given question step by step.\nInstructions:\n1. First")
    assert indented.startswith(
        "Answer the given question step by step.\n    Instructions:\n    1. First"
    ) and indented.endswith("\n    Question: Who?\n")
    assert [line.strip() for line in flush.split("\n")] == [
        line.strip() for line in indented.split("\n")
    ]  # the same words
    p = SearchParams(
        cache_dir=str(tmp_path), world_people=20, world_questions=50, prompt="reseek_code", system="reseek", max_tasks=2
    )
    prompt = load_tasks(p, "train")[0].prompt
    assert (
        prompt[0] == {"role": "system", "content": "You are a helpful and harmless assistant."}
        and prompt[1]["role"] == "user"
    )
    assert isinstance(
        load_tasks(SearchParams(cache_dir=str(tmp_path), world_people=20, world_questions=50, max_tasks=2), "train")[
            0
        ].prompt,
        str,
    )
    with pytest.raises(ValueError, match=r"system must be one of \('none', 'reseek'\), got 'harmless'"):
        load_tasks(
            SearchParams(cache_dir=str(tmp_path), world_people=20, world_questions=50, system="harmless"), "train"
        )


def test_a_generated_world_is_cached_per_config_and_per_generator_code(tmp_path, monkeypatch):
    import envs.search

    p = SearchParams(cache_dir=str(tmp_path), world_people=10, world_hops=[1], world_questions=5)
    first = envs.search.world_dir(p)
    assert envs.search.world_dir(p) == first and (first / "questions.jsonl").exists()  # found, not written again
    monkeypatch.setattr(envs.search, "_generator_source", lambda: "other generator code")
    other = envs.search.world_dir(p)
    assert other != first and (other / "corpus.jsonl").exists()  # another generator's world is not reused
