"""The SFT warm start: scripted demos played through the real envs, tokenized as rollouts, trained by TRL."""

import ast
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.base import Task, Trajectory, Turn
from envs.code import CodeParams
from envs.code import demonstrations as code_demos
from envs.code.demos import misnamed, mutants
from envs.search import SearchParams
from envs.search import demonstrations as search_demos
from envs.search.world import CAREER
from rl.config import load_config
from rl.rollout.chat import TurnFormatter
from rl.run.sft import load_trajectories, make_trainer, read_trajectories, sft_examples, tokenize, trajectory_text
from rl.run.start import starting_model, starting_path
from tests.conftest import CHAT_TEMPLATE


def _search_params(tmp_path, **kw):
    return SearchParams(
        cache_dir=str(tmp_path / "cache"),
        prompt="short",
        world_people=40,
        world_distractors=1,
        world_questions=300,
        topk=1,
        max_obs_words=16,
        **kw,
    )


def test_search_demos_have_the_keep_and_fix_shapes(tmp_path):
    demos = search_demos(_search_params(tmp_path), 120, seed=0, keep_share=0.4, hesitation=0.5)
    assert len(demos) == 120
    fixes = [d for d in demos if any(t.info["demo"] == "mistake" for t in d.turns)]
    assert 0.45 < len(fixes) / len(demos) < 0.75  # 1 - keep_share, up to sampling
    for d in demos:
        assert d.turns[-1].info["action"] == "answer" and d.turns[-1].info["score"] == 1.0
        searches = [t for t in d.turns if t.info["action"] == "search"]
        assert all(t.info["doc_ids"] for t in searches)  # real retrieval ran
        # Search-R1's spacing: the query starts with the same space-prefixed token as the name in the question.
        assert all(t.action == f"<search> {t.info['query']} </search>" for t in searches)
        assert d.turns[-1].action == f"<answer> {d.turns[-1].info['answer']} </answer>"
    for d in fixes:  # temptation-correction: the wrong search, a No, then the right search judged Yes
        wrong = next(i for i, t in enumerate(d.turns) if t.info["demo"] == "mistake")
        assert d.turns[wrong].info["action"] == "search" and not d.turns[wrong].info["gold_doc_retrieved"]
        assert d.turns[wrong + 1].info["verdict"] == "no" and d.turns[wrong + 2].info["gold_doc_retrieved"]
    keeps = [d for d in demos if d not in fixes]
    hesitant = [d for d in keeps if "? Yes." in d.turns[1].action]
    assert 0 < len(hesitant) < len(keeps)
    assert all(t.info["verdict"] == "yes" for d in keeps for t in d.turns if t.info["action"] == "judge")


def test_search_demos_without_reasoning_judge_at_once(tmp_path):
    demos = search_demos(_search_params(tmp_path, demo_reasoning=False), 60, seed=0, keep_share=0.4, hesitation=0.5)
    judges = [t.action for d in demos for t in d.turns if t.info["action"] == "judge"]
    assert "<judge>No</judge>" in judges and "<judge>Yes</judge>" in judges
    # Only the hesitation-correction still thinks aloud: the doubt, then the right call.
    assert {j for j in judges if "<think>" in j} and all(
        j.startswith("<think>Is this ") for j in judges if "<think>" in j
    )


def test_search_demos_by_occupation_search_the_surname_then_add_the_occupation(tmp_path):
    # "Where was Rutaru the poet born?": the surname first; a namesake's passage is judged No, then the whole phrase.
    params = SearchParams(
        cache_dir=str(tmp_path),
        prompt="short",
        world_people=60,
        world_distractors=1,
        world_hops=[1],
        world_questions=150,
        world_relations=["born_in", "birth_year"],
        world_by_occupation=True,
        topk=1,
        max_obs_words=12,
        demo_reasoning=False,
    )
    demos = search_demos(params, 80, seed=0, keep_share=0.4, hesitation=0.0)
    assert len(demos) == 80
    shapes = {tuple(t.info["action"] for t in d.turns) for d in demos}
    assert shapes == {
        ("search", "judge", "answer"),
        ("search", "judge", "search", "judge", "answer"),
    }  # the retriever decides
    for d in demos:
        question, (first, judge) = d.task.metadata["question"], d.turns[:2]
        surname = first.info["query"]
        assert f" was {surname} the " in question and all(
            t.info["demo"] == "expert" for t in d.turns
        )  # every turn is learned
        assert (judge.info["verdict"] == "yes") == first.info["gold_doc_retrieved"]
        if len(d.turns) == 5:
            occupation = question.split(f" {surname} the ")[1].split(" ")[0]
            assert d.turns[2].info["query"] == f"{surname} the {occupation}" and d.turns[2].info["gold_doc_retrieved"]


@pytest.mark.parametrize("judge_mode", ["soft", "hard"])
def test_search_demos_by_occupation_repeat_the_surname_where_shown_passages_are_skipped(tmp_path, judge_mode):
    # With new_passages the same query brings the next passage: after a No the expert searches the surname again.
    params = SearchParams(
        cache_dir=str(tmp_path),
        prompt="short",
        world_people=60,
        world_distractors=1,
        world_hops=[1],
        world_questions=150,
        world_relations=["born_in", "birth_year"],
        world_by_occupation=True,
        new_passages=True,
        topk=1,
        max_obs_words=12,
        demo_reasoning=False,
        judge_mode=judge_mode,
    )
    demos = search_demos(params, 60, seed=0, keep_share=0.4, hesitation=0.0)
    corrected = [d for d in demos if len(d.turns) == 5]
    assert len(demos) == 60 and corrected
    for d in corrected:
        first, judge, second = d.turns[:3]
        assert judge.info["verdict"] == "no" and second.info["query"] == first.info["query"]
        assert second.info["gold_doc_retrieved"] and second.info["doc_ids"] != first.info["doc_ids"]
    if judge_mode == "hard":  # a No releases nothing; the Yes releases the passage the answer is copied from
        for d in demos:
            judges = [t for t in d.turns if t.info["action"] == "judge"]
            assert (
                all(t.observation == "" for t in judges[:-1])
                and d.turns[-1].action.split()[1] in judges[-1].observation
            )


def test_search_demos_in_sections_judge_the_wrong_section_no_and_search_the_name_again(tmp_path):
    params = SearchParams(
        cache_dir=str(tmp_path),
        prompt="short",
        world_people=60,
        world_distractors=1,
        world_hops=[1],
        world_questions=150,
        world_relations=["born_in", "birth_year"],
        world_sections=True,
        new_passages=True,
        topk=1,
        max_obs_words=12,
        demo_reasoning=False,
    )
    demos = search_demos(params, 60, seed=0, keep_share=1.0, hesitation=0.0)
    shapes = [tuple(t.info["action"] for t in d.turns) for d in demos]
    assert len(demos) == 60 and set(shapes) == {
        ("search", "judge", "answer"),
        ("search", "judge", "search", "judge", "answer"),
    }
    for d in demos:
        if len(d.turns) == 5:
            first, judge, second = d.turns[:3]
            assert first.info["doc_ids"][0].endswith(CAREER) and judge.info["verdict"] == "no"
            assert second.info["query"] == first.info["query"] and second.info["gold_doc_retrieved"]
        assert all(t.info["demo"] == "expert" for t in d.turns) and d.turns[-1].info["score"] == 1.0


def test_code_mutants_change_one_thing():
    program = "def f(x):\n    return [v + 3 for v in x if v > 2]"
    found = mutants(program)
    assert "def f(x):\n    return [v - 3 for v in x if v > 2]" in found
    assert "def f(x):\n    return [v + 3 for v in x if v >= 2]" in found
    assert "def f(x):\n    return [v + 4 for v in x if v > 2]" in found
    assert all(ast.parse(m) for m in found) and program not in found


def test_code_mutants_can_miscopy_the_function_name():
    program = "def plus_80_all(x):\n    return [v + 80 for v in x]"
    assert misnamed("plus_80_all") == ["plus_80_al", "plus_81_all"] and misnamed("f") == []
    renamed = set(mutants(program, names=True)) - set(mutants(program))
    assert renamed == {
        "def plus_80_al(x):\n    return [v + 80 for v in x]",
        "def plus_81_all(x):\n    return [v + 80 for v in x]",
    }


def test_code_demos_keep_right_code_and_fix_wrong_code_in_the_sandbox():
    demos = code_demos(CodeParams(synthetic_problems=12), 60, seed=1, keep_share=0.4, hesitation=0.5)
    keeps = [d for d in demos if d.turns[0].info["demo"] == "expert"]
    fixes = [d for d in demos if d.turns[0].info["demo"] == "mistake"]
    assert keeps and fixes and len(keeps) + len(fixes) == 60
    for d in keeps:
        assert [t.info["score"] for t in d.turns] == [1.0, 1.0] and d.turns[0].action == d.turns[1].action
    for d in fixes:
        assert d.turns[0].info["score"] < 1.0 and d.turns[1].info["score"] == 1.0  # the sandbox said so


def test_code_demos_end_where_the_env_ends_and_show_its_feedback():
    # With stop_when_correct a right first attempt is the whole episode; a fix sees the failing asserts first.
    p = CodeParams(synthetic_problems=12, feedback="tests", stop_when_correct=True, demo_wrong_names=True)
    demos = code_demos(p, 60, seed=1, keep_share=0.4, hesitation=0.5)
    keeps = [d for d in demos if d.turns[0].info["demo"] == "expert"]
    fixes = [d for d in demos if d.turns[0].info["demo"] == "mistake"]
    assert keeps and fixes
    assert all(len(d.turns) == 1 and d.turns[0].info["score"] == 1.0 and d.turns[0].observation == "" for d in keeps)
    for d in fixes:
        assert len(d.turns) == 2 and d.turns[1].info["score"] == 1.0
        assert d.turns[0].observation.startswith("\n\nRunning the code above on the tests gave:\nassert ")
    assert any("NameError" in d.turns[0].observation for d in fixes)  # a miscopied name: the asserts cannot call it


def _trajectory():
    return Trajectory(
        Task("t", "Question: where?\n"),
        [
            Turn("<search>wrong</search>", "\n<information>bad</information>\n", {"demo": "mistake"}),
            Turn("<judge>No</judge>", "", {"demo": "expert"}),
            Turn("<answer>here</answer>", "", {"demo": "expert"}),
        ],
    )


@pytest.mark.parametrize("chat", [False, True])
def test_tokenize_puts_loss_on_actions_only_and_matches_the_rollout_layout(tiny_model_dir, chat):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHAT_TEMPLATE if chat else None
    fmt = TurnFormatter(tok)
    tr = _trajectory()
    ids, mask = tokenize(tr, fmt, ["</search>", "</judge>", "</answer>"], 64, train_on_mistakes=False)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    expected = (
        fmt.prompt_ids(tr.task.prompt)
        + enc(tr.turns[0].action)
        + fmt.observation_ids(tr.turns[0].observation, False, 64)
        + enc("<judge>No</judge>")
        + fmt.observation_ids("", False, 64)
        + enc("<answer>here</answer>")
    )
    assert ids == expected
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "<judge>No</judge><answer>here</answer>"  # the mistake and every observation are context
    _, with_mistakes = tokenize(tr, fmt, ["</search>", "</judge>", "</answer>"], 64, train_on_mistakes=True)
    assert tok.decode([i for i, m in zip(ids, with_mistakes) if m]).startswith("<search>wrong</search>")
    # An action no stop string ends gets EOS, inside the loss, so the model learns to stop.
    ids, mask = tokenize(tr, fmt, [], 64, train_on_mistakes=False)
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1


def test_read_trajectories_accepts_episodes_trajectories_and_messages(tmp_path):
    tr = _trajectory()
    path = tmp_path / "data.jsonl"
    messages = [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "<search>q</search>"},
        {"role": "user", "content": "info"},
        {"role": "assistant", "content": "<answer>a</answer>"},
    ]
    path.write_text(
        "\n".join(
            [
                json.dumps({"trajectory": tr.to_dict(), "step": 3}),
                json.dumps(tr.to_dict()),
                json.dumps({"messages": messages}),
            ]
        )
        + "\n"
    )
    read = read_trajectories(path)
    assert [len(r.turns) for r in read] == [3, 3, 2]
    assert (
        read[2].task.prompt == messages[:1]
        and read[2].turns[0].observation == "info"
        and read[2].turns[1].observation == ""
    )
    path.write_text(json.dumps({"nothing": 1}) + "\n")
    with pytest.raises(ValueError, match="data.jsonl:1"):
        read_trajectories(path)


def _code_cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            "env.name=code",
            "env.params={synthetic_problems: 12}",
            "model.tiny={layers: 2, hidden: 64, intermediate: 128, heads: 4, kv_heads: 2, vocab_size: 400}",
            "sft.steps=30",
            "sft.demos=200",
            "sft.batch_size=8",
            "sft.lr=3e-3",
            "sft.warmup_steps=0",
            *extra,
        ],
    )


def test_trl_labels_mask_everything_but_the_actions(tmp_path, tiny_model_dir):
    cfg = _code_cfg(tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, stats = sft_examples(cfg, tok, [_trajectory()] * 2)
    trainer = make_trainer(cfg, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, examples, tmp_path / "trl")
    row = trainer.train_dataset[0]
    assert [label != -100 for label in row["labels"]] == [bool(m) for m in examples[0]["assistant_masks"]]
    assert stats["sft/fix_share"] == 1.0 and stats["sft/examples"] == 2


def test_the_cpu_trainer_loss_is_trls_loss_over_the_actions(tmp_path, tiny_model_dir):
    from trl import SFTTrainer

    cfg = _code_cfg(tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = sft_examples(cfg, tok, [_trajectory()] * 2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = make_trainer(cfg, model, tok, examples, tmp_path / "trl")
    assert type(trainer).__name__ == "CPUSFTTrainer"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ours = trainer.compute_loss(model, dict(batch))
    fused = SFTTrainer.compute_loss(trainer, model, dict(batch))  # TRL's own loss, through its fused LM head
    assert ours.item() == pytest.approx(fused.item(), rel=1e-5)
    # And it is the mean negative log-likelihood of the action tokens alone, computed here by hand.
    logprobs = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[:, :-1], -1)
    labels = batch["labels"][:, 1:]
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert ours.item() == pytest.approx(
        -(picked * (labels != -100)).sum().item() / (labels != -100).sum().item(), rel=1e-5
    )


def test_cosine_schedule_decays_the_learning_rate_to_zero(tmp_path, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = _code_cfg(tmp_path, "sft.steps=10", "sft.schedule=cosine")
    examples, _ = sft_examples(cfg, tok, [_trajectory()] * 4)
    trainer = make_trainer(cfg, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, examples, tmp_path / "trl")
    trainer.train()
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert rates[0] > 0.5 * cfg.sft.lr and rates[-1] < 0.05 * cfg.sft.lr
    with pytest.raises(ValueError, match="sft.schedule"):
        make_trainer(_code_cfg(tmp_path, "sft.schedule=linear"), trainer.model, tok, examples, tmp_path / "trl")


def test_warm_start_builds_a_tokenizer_on_the_demos_and_sft_learns_them(tmp_path):
    cfg = _code_cfg(tmp_path)
    path, timings = starting_model(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "sft" / "model" and {"model_build", "sft_data", "sft"} <= set(timings)
    stats = json.loads((path.parent / "sft_metrics.json").read_text())
    assert stats["sft/final_loss"] < 0.6 * stats["sft/first_loss"]  # real optimizer steps on the demos
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok.encode("[DONE]", add_special_tokens=False)) <= 3  # the tokenizer saw the demos' text
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base_model")
    tuned = AutoModelForCausalLM.from_pretrained(path)
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), tuned.parameters()))
    # A second call finds the SFT model and trains nothing.
    again, timings = starting_model(cfg, tmp_path / "run")
    assert again == path and "sft" not in timings
    # A run from that model without SFT starts from it and builds nothing (`rl demo` evaluates it as "sft").
    reuse = _code_cfg(tmp_path, f"model.path={path}", "sft.steps=0")
    assert starting_model(reuse, tmp_path / "again") == (path, {}) and starting_path(reuse, tmp_path / "again") == path
    assert not (tmp_path / "again").exists()


def test_trajectory_text_is_what_the_model_reads_and_writes():
    text = trajectory_text(_trajectory())
    assert text.startswith("Question: where?\n<search>wrong</search>\n<information>bad") and text.endswith(
        "<answer>here</answer>"
    )


def test_an_env_without_demos_needs_a_data_file():
    with pytest.raises(ValueError, match="no scripted demonstrations"):
        load_trajectories(load_config(None, ["env.name=lookup", "sft.steps=2"]))


def test_sft_stops_at_the_first_check_where_greedy_play_on_rl_tasks_reaches_stop_score(tmp_path, lookup_experts):
    from pathlib import Path

    lookup = Path(__file__).resolve().parents[1] / "configs" / "lookup.yaml"
    cfg = load_config(
        lookup,
        [
            f"run_dir={tmp_path / 'run'}",
            f"sft.data={lookup_experts}",
            "sft.steps=300",
            "sft.lr=3e-3",
            "sft.warmup_steps=0",
            "sft.batch_size=8",
            "sft.stop_score=1.0",
            "sft.check_every=5",
        ],
    )
    path, _ = starting_model(cfg, tmp_path / "run")
    checks = json.loads((path.parent / "sft_checks.json").read_text())
    steps_run = json.loads((path.parent / "sft_metrics.json").read_text())["sft/steps_run"]
    assert [step for step, _ in checks] == list(range(5, 5 * len(checks) + 1, 5))  # a check every check_every steps
    assert checks[-1][1] == 1.0 and all(score < 1.0 for _, score in checks[:-1])  # stopped at the first that reached it
    assert steps_run == checks[-1][0] < 300


def test_sft_that_never_reaches_stop_score_runs_exactly_sft_steps(tmp_path, lookup_experts):
    from pathlib import Path

    lookup = Path(__file__).resolve().parents[1] / "configs" / "lookup.yaml"
    cfg = load_config(
        lookup,
        [
            f"run_dir={tmp_path / 'run'}",
            f"sft.data={lookup_experts}",
            "sft.steps=10",
            "sft.warmup_steps=0",
            "sft.batch_size=2",
            "sft.stop_score=2.0",
            "sft.check_every=5",
        ],
    )  # a score of 2 is out of reach
    # 8 examples in batches of 2: step 10 falls inside the third epoch, where one more step could follow
    path, _ = starting_model(cfg, tmp_path / "run")
    checks = json.loads((path.parent / "sft_checks.json").read_text())
    assert [step for step, _ in checks] == [5, 10]
    assert (
        json.loads((path.parent / "sft_metrics.json").read_text())["sft/steps_run"] == 10
    )  # the last check does not add a step
