"""Search rewards, computed by hand: answer EM/F1, ReSeek's judge reward and its pairing, farming, format."""

import json
import math

import pytest

from envs.base import Task, Trajectory, Turn
from envs.search.bm25 import BM25Index
from envs.search.env import SearchEnv
from envs.search.qa import exact_match, f1_score
from envs.search.world import WorldConfig, write_world
from rewards import build_reward
from rewards.search import aggregate, found_reward, judge_reward, last_answer, well_formed

GOLD = 'Doc 1(Title: "Fiku Guild") Fiku Guild is an organization founded in 1733 by Fako Rediki.\n'  # holds the answer
OTHER = 'Doc 1(Title: "Pupuki Guild") Pupuki Guild is an organization founded in 1915 by Leba Pupuki.\n'  # does not
# answer, but not a gold passage
MENTION = 'Doc 1(Title: "The Northern Clock") The Northern Clock is a novel by Fako Rediki.\n'


def search(information, doc_ids):
    return Turn(
        "<search>q</search>",
        f"\n\n<information>{information}</information>\n\n",
        {"action": "search", "information": information, "doc_ids": doc_ids, "score": 0.0},
    )


def judge(verdict):
    return Turn(f"<judge>{verdict}</judge>", "", {"action": "judge", "verdict": verdict.lower(), "score": 0.0})


def answer(text):
    return Turn(f"<think>done</think><answer>{text}</answer>", "", {"action": "answer", "score": 0.0})


def episode(*turns):
    return Trajectory(
        Task("t", "Question: Who founded Fiku Guild?\n", {"answers": ["Fako Rediki"], "gold_doc_ids": ["145"]}),
        list(turns),
    )


def test_em_and_f1_use_squad_normalisation():
    assert exact_match("The Fako  Rediki.", ["fako rediki"]) == 1.0
    assert exact_match("Fako", ["Fako Rediki"]) == 0.0
    assert f1_score("Fako Rediki of Kumar", ["Fako Rediki"]) == pytest.approx(2 / 3)  # P = 2/4, R = 2/2
    assert f1_score("Leba", ["Fako Rediki", "Leba Pupuki"]) == pytest.approx(2 / 3)  # best gold: P = 1, R = 1/2


def test_answer_reward_reads_only_the_last_answer_of_the_response():
    fn = build_reward([{"name": "search_answer"}])
    two = episode(Turn("<answer>Fako Rediki</answer> no, <answer>Leba Pupuki</answer>", "", {}))
    assert last_answer(two) == "Leba Pupuki" and fn(two).outcome == 0.0
    # An answer in an observation (or in the prompt's instructions) is not the agent's.
    quoted = episode(
        Turn("<search>q</search>", "<information>... <answer>Fako Rediki</answer></information>", {"action": "search"})
    )
    r = fn(quoted)
    assert r.outcome == 0.0 and r.components["search_answer/answered"] == 0.0
    f1 = build_reward([{"name": "search_answer", "params": {"metric": "f1"}}])
    assert f1(episode(answer("Fako Rediki of Kumar"))).outcome == pytest.approx(2 / 3)


def test_right_judgment_earns_its_reward_on_the_judge_turn():
    r = judge_reward()(episode(search(GOLD, ["145"]), judge("Yes"), answer("Fako Rediki")))
    assert r.process == pytest.approx([0.0, 0.3, 0.0]) and r.outcome == 0.0
    bonus = judge_reward(answer_bonus=0.1)(episode(search(GOLD, ["145"]), judge("Yes"), answer("Fako Rediki")))
    assert bonus.process == pytest.approx([0.0, 0.4, 0.0])
    wrong_answer = judge_reward(answer_bonus=0.1)(episode(search(GOLD, ["145"]), judge("Yes"), answer("Leba Pupuki")))
    assert wrong_answer.process == pytest.approx([0.0, 0.3, 0.0])  # the bonus needs a right answer


def test_wrong_judgments_are_penalised_asymmetrically():
    wrong_yes = judge_reward()(episode(search(OTHER, ["143"]), judge("Yes"), answer("Leba Pupuki")))
    wrong_no = judge_reward(answer_bonus=0.1)(episode(search(GOLD, ["145"]), judge("No"), answer("Fako Rediki")))
    assert wrong_yes.process == pytest.approx([0.0, -0.6, 0.0])
    assert wrong_no.process == pytest.approx([0.0, -0.3, 0.0])  # no bonus for a wrong judgment


def test_a_judgment_pairs_only_with_the_information_right_before_it():
    # GOLD (holds the answer) is never judged; the No is about OTHER, which is right: +0.3, not -0.3.
    trajectory = episode(search(GOLD, ["145"]), search(OTHER, ["143"]), judge("No"), answer("Fako Rediki"))
    assert judge_reward(aggregate_by="sum")(trajectory).process == pytest.approx([0.0, 0.0, 0.3, 0.0])
    # The default mean is over information blocks; the unjudged one counts 0: (0 + 0.3) / 2 on the judge's turn.
    r = judge_reward()(trajectory)
    assert r.process == pytest.approx([0.0, 0.0, 0.15, 0.0]) and r.components["pairs"] == 1.0
    assert judge_reward(unjudged=-0.1, aggregate_by="sum")(trajectory).process == pytest.approx([-0.1, 0.0, 0.3, 0.0])
    # A second judgment in a row has no information of its own and earns nothing.
    twice = episode(search(GOLD, ["145"]), judge("Yes"), judge("No"), answer("Fako Rediki"))
    assert judge_reward(aggregate_by="sum")(twice).process == pytest.approx([0.0, 0.3, 0.0, 0.0])


def test_oracles_and_the_correctness_and_utility_components():
    # MENTION holds the answer but is not the gold passage: right by the answer oracle, wrong by the gold-doc one.
    trajectory = episode(search(MENTION, ["169"]), judge("Yes"), answer("Fako Rediki"))
    by_answer, by_doc = judge_reward()(trajectory), judge_reward(oracle="gold_doc")(trajectory)
    assert by_answer.process == pytest.approx([0.0, 0.3, 0.0]) and by_doc.process == pytest.approx([0.0, -0.6, 0.0])
    for r in (by_answer, by_doc):
        assert r.components["correctness"] == pytest.approx(0.3) and r.components["utility"] == pytest.approx(-0.6)
    assert by_answer.components["correct_judgments"] == 1.0 and by_doc.components["correct_judgments"] == 0.0
    assert by_doc.components["pairs"] == by_doc.components["yes_judgments"] == by_doc.components["searches"] == 1.0
    no_gold = Trajectory(Task("t", "p", {"answers": ["Fako Rediki"]}), trajectory.turns)
    assert "utility" not in judge_reward()(no_gold).components
    with pytest.raises(ValueError, match="needs the task's gold_doc_ids"):
        judge_reward(oracle="gold_doc")(no_gold)


def test_reranker_oracle_names_its_optional_dependency():
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install sentence-transformers"):
            judge_reward(oracle="reranker")(episode(search(GOLD, ["145"]), judge("Yes"), answer("Fako Rediki")))
    else:
        pytest.skip("sentence-transformers is installed; scoring would download a reranker")


def test_aggregation_sum_mean_cap():
    assert aggregate([0.3, 0.3, -0.6], "sum", 0.5) == pytest.approx([0.3, 0.3, -0.6])
    assert aggregate([0.3, 0.3, -0.6], "mean", 0.5) == pytest.approx([0.1, 0.1, -0.2])
    assert aggregate([0.3, 0.3, 0.3, 0.3], "cap", 0.5) == pytest.approx([0.125] * 4)  # 1.2 clipped to 0.5
    assert aggregate([0.3, -0.6], "cap", 0.5) == pytest.approx([0.3, -0.6])  # -0.3 is within the cap


def test_no_judge_reward_without_an_answer_by_default():
    trajectory = episode(search(OTHER, ["143"]), judge("No"))
    assert judge_reward()(trajectory).process == [0.0, 0.0]
    assert judge_reward(require_answer=False)(trajectory).process == pytest.approx([0.0, 0.3])


def test_rate_empty_false_leaves_searches_that_found_nothing_out_of_the_judge_reward():
    nothing = "No passage matches the query.\n"
    garbled = episode(search(nothing, []), judge("No"), search(OTHER, ["143"]), judge("Yes"), answer("Leba Pupuki"))
    assert judge_reward()(garbled).process == pytest.approx(
        [0.0, 0.15, 0.0, -0.3, 0.0]
    )  # mean of +0.3 (the easy No) and -0.6
    skipped = judge_reward(rate_empty=False)(garbled)
    assert skipped.process == pytest.approx([0.0, 0.0, 0.0, -0.6, 0.0]) and skipped.components["pairs"] == 1.0
    only_empty = episode(search(nothing, []), judge("No"), answer("Leba Pupuki"))
    assert judge_reward(rate_empty=False)(only_empty).process == [0.0, 0.0, 0.0]


def test_found_pays_the_search_that_finds_first_or_after_right_nos_and_nothing_else():
    fn = found_reward(bonus=0.5)
    assert fn(episode(search(GOLD, ["145"]), judge("Yes"), answer("Fako Rediki"))).process == [0.5, 0.0, 0.0]
    recovered = episode(search(OTHER, ["143"]), judge("No"), search(GOLD, ["145"]), judge("Yes"), answer("x"))
    assert fn(recovered).process == [0.0, 0.0, 0.5, 0.0, 0.0]  # paid on the re-search, whatever the answer
    twice = episode(search(GOLD, ["145"]), judge("No"), search(GOLD, ["145"]), judge("Yes"), answer("Fako Rediki"))
    assert fn(twice).process == [0.5, 0.0, 0.0, 0.0, 0.0]  # once an episode
    nothing = "No passage matches the query.\n"
    for broken in (
        episode(search(nothing, []), judge("No"), search(GOLD, ["145"]), answer("Fako Rediki")),  # garbled first
        episode(search(OTHER, ["143"]), judge("Yes"), search(GOLD, ["145"]), answer("Fako Rediki")),  # wrong Yes
        episode(search(OTHER, ["143"]), search(GOLD, ["145"]), answer("Fako Rediki")),
    ):  # not judged
        assert sum(fn(broken).process) == 0.0 and fn(broken).components["found"] == 0.0


DEFAULT_REWARD = [{"name": "search_answer"}, {"name": "search_judge"}, {"name": "search_format"}]


def test_judge_farming_loses_to_a_right_answer_under_the_defaults():
    farming = episode(*[t for _ in range(4) for t in (search(OTHER, ["143"]), judge("No"))], answer("Leba Pupuki"))
    honest = episode(search(GOLD, ["145"]), answer("Fako Rediki"))
    honest_judged = episode(search(GOLD, ["145"]), judge("Yes"), answer("Fako Rediki"))
    fn = build_reward(DEFAULT_REWARD)
    assert fn(farming).total == pytest.approx(0.3)  # EM 0 + mean(4 x 0.3)
    assert fn(honest).total == pytest.approx(1.0)  # EM 1 + the unjudged information's 0
    assert fn(honest_judged).total == pytest.approx(1.3)
    # ReSeek's plain sum pays 4 x 0.3 = 1.2 for the farming: more than the right answer without a judgment.
    summed = build_reward([{"name": "search_answer"}, {"name": "search_judge", "params": {"aggregate_by": "sum"}}])
    assert summed(farming).total == pytest.approx(1.2) and summed(honest).total == pytest.approx(1.0)
    capped = build_reward([{"name": "search_answer"}, {"name": "search_judge", "params": {"aggregate_by": "cap"}}])
    assert capped(farming).total == pytest.approx(0.5) and capped(honest).total == pytest.approx(1.0)


def test_farming_through_the_real_env_and_index(tmp_path):
    """The same comparison with episodes the env plays on a generated world: useless searches are real searches."""
    out = write_world(WorldConfig(seed=5, people=40, hops=[1], questions=20), tmp_path)
    index = BM25Index(out / "corpus.jsonl", tmp_path / "cache")
    questions = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    q = questions[0]
    # Useless searches: other questions whose passages do not hold this question's answer.
    others = [
        o
        for o in questions[1:]
        if not any(q["answers"][0] in h["document"]["contents"] for h in index.search([o["question"]], 3)[0])
    ]
    task = Task(q["id"], q["question"], {"answers": q["answers"], "gold_doc_ids": q["gold_doc_ids"]})

    def play(actions):
        env, trajectory = SearchEnv(index), Trajectory(task)
        env.reset(task)
        for action in actions:
            result = env.step(action)
            trajectory.turns.append(Turn(action, result.observation, result.info))
        assert result.done
        return Trajectory.from_dict(json.loads(json.dumps(trajectory.to_dict())))  # re-scored from the logged JSON

    useless = [f"<search>{o['question']}</search>" for o in others[:4]]
    wrong = next(o["answers"][0] for o in others if o["answers"] != q["answers"])
    farming = play([a for s in useless for a in (s, "<judge>No</judge>")] + [f"<answer>{wrong}</answer>"])
    assert [t.info["answer_in_information"] for t in farming.turns if t.info["action"] == "search"] == [False] * 4
    honest = play([f"<search>{q['question']}</search>", f"<answer>{q['answers'][0]}</answer>"])
    fn = build_reward(DEFAULT_REWARD)
    assert fn(farming).total == pytest.approx(0.3) and fn(honest).total == pytest.approx(1.0)


def test_format():
    assert well_formed("<think>who founded it?</think>\n<search>Fiku Guild</search>")
    assert well_formed("<judge>No</judge>") and well_formed("  <answer>Fako Rediki</answer>\n")
    assert not well_formed("<search>Fiku Guild</search>", require_think=True)
    assert not well_formed("I will search <search>Fiku Guild</search>")  # text outside <think>
    assert not well_formed("<think>a</think><think>b</think><search>q</search>")
    assert not well_formed("<search>q <answer>x</answer></search>")
    assert not well_formed("<think><information>made up</information></think><answer>x</answer>")
    fn = build_reward([{"name": "search_format", "params": {"penalty": 0.2}}])
    r = fn(episode(Turn("hmm", "", {"action": "invalid", "invalid": True}), search(GOLD, ["145"]), judge("Yes")))
    assert r.process == pytest.approx([-0.2, 0.0, 0.0]) and r.outcome == pytest.approx(-0.2)  # and no answer
    assert r.components["search_format/malformed_turns"] == 1.0


def test_reseek_codes_substring_oracle_finds_an_answer_inside_a_longer_word():
    inside = 'Doc 1(Title: "Romeo") Romeo and Juliet is a play.\n'  # "rome" only inside "Romeo"
    trajectory = Trajectory(
        Task("t", "Q", {"answers": ["Rome"], "gold_doc_ids": []}),
        [search(inside, ["1"]), judge("Yes"), answer("Paris")],
    )
    assert judge_reward(oracle="substring")(trajectory).process == pytest.approx(
        [0.0, 0.3, 0.0]
    )  # ReSeek's code: a right Yes
    assert judge_reward(oracle="answer")(trajectory).process == pytest.approx(
        [0.0, -0.6, 0.0]
    )  # whole words: a wrong Yes
    with pytest.raises(ValueError, match="oracle must be 'answer', 'substring'"):
        judge_reward(oracle="substrings")


def test_reseek_codes_pairing_lets_one_judgment_count_for_every_block_before_it():
    trajectory = episode(search(GOLD, ["145"]), search(OTHER, ["143"]), judge("No"), answer("Fako Rediki"))
    assert sum(judge_reward(aggregate_by="sum")(trajectory).process) == pytest.approx(0.3)  # the No is about OTHER only
    # Paired with both: a wrong No about GOLD (-0.3) and a right one about OTHER (+0.3), both on the judge's turn.
    r = judge_reward(aggregate_by="sum", pairing="next")(trajectory)
    assert r.process == pytest.approx([0.0, 0.0, 0.0, 0.0]) and r.components["pairs"] == 2.0
    with pytest.raises(ValueError, match="pairing must be 'adjacent' or 'next'"):
        judge_reward(pairing="first")


def test_reseek_codes_rule_that_a_yes_is_right_when_the_answer_is():
    trajectory = episode(search(OTHER, ["143"]), judge("Yes"), answer("Fako Rediki"))
    assert judge_reward(answer_bonus=0.1)(trajectory).process == pytest.approx([0.0, -0.6, 0.0])
    assert judge_reward(answer_bonus=0.1, yes_if_answer_right=True)(trajectory).process == pytest.approx(
        [0.0, 0.4, 0.0]
    )
    no = episode(
        search(OTHER, ["143"]), judge("No"), answer("Fako Rediki")
    )  # a No still answers to the oracle: right here
    assert judge_reward(answer_bonus=0.1, yes_if_answer_right=True)(no).process == pytest.approx([0.0, 0.4, 0.0])


def test_recovery_false_rejection_and_research_after_no_counted_by_hand():
    from envs.search.metrics import search_metrics

    miss, hit = search("nothing useful", ["7"]), search("Fako Rediki founded it", ["145"])
    episodes = [
        episode(miss, judge("No"), hit, judge("Yes"), answer("Fako Rediki")),  # missed first, searched again, recovered
        episode(
            miss, judge("No"), answer("Someone Else")
        ),  # missed first, answered without searching again: not recovered
        episode(
            hit, judge("No"), hit, judge("Yes"), answer("Fako Rediki")
        ),  # a useful block rejected, then searched again
        episode(hit, judge("Yes"), answer("Fako Rediki")),  # right at the first search: not in the recovery count
    ]
    m = search_metrics(episodes)
    assert m["recovery"] == 1 / 2  # of the two episodes whose first search missed, one ends right
    assert m["false_rejection"] == 1 / 4  # useful blocks judged: 4 (episode 1: 1, episode 3: 2, episode 4: 1); one "No"
    assert m["research_after_no"] == 2 / 3  # three "No"s; a search followed the first and the third
    assert m["judge_accuracy"] == 5 / 6 and m["em"] == 3 / 4  # six judgments, the rejected useful block the one wrong
    none = search_metrics([episode(hit, judge("Yes"), answer("Fako Rediki"))])
    assert math.isnan(none["recovery"]) and math.isnan(none["research_after_no"]) and none["false_rejection"] == 0.0
