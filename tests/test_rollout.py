"""Token fidelity of the multi-turn rollout with a real tiny model and the HF engine."""

import copy

import pytest
import torch

from envs.base import StepResult, Task
from envs.lookup import LookupEnv, LookupParams, load_tasks
from rl.batch import Batch
from rl.config import AlgoConfig, LearnerConfig, RolloutConfig
from rl.learn.learner import Learner
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine, Request, SamplingParams
from rl.rollout.loop import rollout
from tests.conftest import CHAT_TEMPLATE


class RecordingEngine(HFEngine):
    """The real HF engine, keeping what it was asked and what it sampled, so the test can compare."""

    def add(self, key, request, params):
        self.requests[key] = request
        super().add(key, request, params)

    def step(self):
        finished = super().step()
        self.generations.update(finished)
        return finished


class WordsEnv:
    """Answers every action with `n` words, for `turns` turns: long observations to test the limits."""

    stop_strings = ["."]

    def __init__(self, n=30, turns=3, fail_on=None):
        self.n, self.turns, self.fail_on, self.t = n, turns, fail_on, 0

    def reset(self, task):
        if task.id == self.fail_on == "reset":
            raise RuntimeError("reset broke")
        self.task, self.t = task, 0
        return task.prompt

    def step(self, action):
        self.t += 1
        if self.task.id == self.fail_on:
            raise RuntimeError("step broke")
        return StepResult(" ".join(["blue"] * self.n), self.t >= self.turns, {"score": 0.0})


def engine_for(tiny, chat=False):
    model, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = CHAT_TEMPLATE if chat else None
    engine = RecordingEngine(copy.deepcopy(model), tok)
    engine.requests, engine.generations = {}, {}
    return engine, TurnFormatter(tok)


@pytest.mark.parametrize("chat", [False, True])
def test_training_ids_are_sampled_ids_plus_observation_ids(tiny, chat):
    engine, formatter = engine_for(tiny, chat)
    params = LookupParams(max_turns=3)
    tasks = load_tasks(params, "train")
    items = [(t, i, 100 + 2 * i + j) for i, t in enumerate(tasks[:4]) for j in range(2)]
    cfg = RolloutConfig(max_turn_tokens=5, max_total_tokens=200)
    episodes = rollout(engine, formatter, lambda: LookupEnv(params), items, cfg).episodes

    # Rebuild every episode from what the engine returned and what the env said.
    for k, ep in enumerate(episodes):
        assert ep.finish in ("done", "max_turns")
        expected_ids = formatter.prompt_ids(ep.trajectory.task.prompt)
        expected_mask = [0] * len(expected_ids)
        expected_lp = [0.0] * len(expected_ids)
        for turn_index, turn in enumerate(ep.trajectory.turns):
            request, gen = engine.requests[k, turn_index], engine.generations[k, turn_index]
            assert request.seed == ep.seed * 1009 + turn_index  # each turn samples from its own seed
            assert request.prompt_ids == expected_ids  # token-in: the history as it stands, never re-rendered
            expected_ids += gen.token_ids
            expected_mask += [1] * len(gen.token_ids)
            expected_lp += gen.logprobs
            if turn_index < len(ep.trajectory.turns) - 1:
                obs = formatter.observation_ids(turn.observation, gen.finish_reason == "eos", cfg.max_obs_tokens)
                expected_ids += obs
                expected_mask += [0] * len(obs)
                expected_lp += [0.0] * len(obs)
        assert ep.token_ids == expected_ids
        assert ep.loss_mask == expected_mask
        assert ep.logprobs == expected_lp
        assert len(ep.turn_ids) == len(ep.token_ids)
    assert any(len(ep.trajectory.turns) > 1 for ep in episodes)


def test_chat_stream_renders_as_the_whole_conversation(tiny):
    """Token-in/token-out with a chat template: the token stream decodes to the template's render."""
    engine, formatter = engine_for(tiny, chat=True)
    tok = formatter.tokenizer
    eos = tok.eos_token_id
    prompt = formatter.prompt_ids("what is kalu")
    # The first action ends with EOS, as a chat model ends its turns; the second at a stop string.
    ids = prompt + tok.encode("red", add_special_tokens=False) + [eos]
    ids += formatter.observation_ids(" no , try again :", True, 100)
    ids += tok.encode("blue .", add_special_tokens=False)
    ids += formatter.observation_ids("no", False, 100)
    messages = [
        {"role": "user", "content": "what is kalu"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": " no , try again :"},
        {"role": "assistant", "content": "blue ."},
        {"role": "user", "content": "no"},
    ]
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_learner_logprobs_match_sampling_logprobs(tiny, tiny_model_dir):
    engine, formatter = engine_for(tiny)
    params = LookupParams(max_turns=3)
    items = [(t, i, i) for i, t in enumerate(load_tasks(params, "train"))]
    episodes = rollout(
        engine, formatter, lambda: LookupEnv(params), items, RolloutConfig(max_turn_tokens=6, temperature=0.8)
    ).episodes
    learner = Learner(tiny_model_dir, LearnerConfig(device="cpu", micro_batch_size=3), AlgoConfig(), temperature=0.8)
    recomputed = learner.logprobs(Batch.from_episodes(episodes))  # [B, T]
    n_policy = 0
    for ep, lp in zip(episodes, recomputed):
        lp = lp[: len(ep.token_ids)]
        mask = torch.tensor(ep.loss_mask, dtype=torch.bool)
        diff = (lp[mask] - torch.tensor(ep.logprobs)[mask]).abs()
        assert diff.max() < 1e-4
        n_policy += int(mask.sum())
    assert n_policy > 50


def test_later_turns_continue_the_cached_keys_and_values(tiny, tiny_model_dir):
    # Turn 2 on runs only the new tokens on top of the episode's cache; what it samples must still be the
    # model's distribution over the whole sequence, as the learner computes it from scratch.
    engine, formatter = engine_for(tiny)
    params = LookupParams(max_turns=4)
    tasks = load_tasks(params, "train")[:2]
    items = [
        (t, g, 10 * g + k) for g, t in enumerate(tasks) for k in range(3)
    ]  # groups: shared prompts, then diverging
    rolled = rollout(engine, formatter, lambda: LookupEnv(params), items, RolloutConfig(max_turn_tokens=5))
    turns = sum(len(ep.trajectory.turns) for ep in rolled.episodes)
    assert turns > len(items) and 0 < rolled.times.cached_tokens < rolled.times.prompt_tokens
    assert rolled.times.metrics()["rollout/prefix_cache_hit_rate"] > 0.5  # most of a later turn is history
    recomputed = Learner(tiny_model_dir, LearnerConfig(device="cpu"), AlgoConfig(), temperature=1.0).logprobs(
        Batch.from_episodes(rolled.episodes)
    )
    for ep, lp in zip(rolled.episodes, recomputed):
        lp = lp[: len(ep.token_ids)]
        mask = torch.tensor(ep.loss_mask, dtype=torch.bool)
        assert (lp[mask] - torch.tensor(ep.logprobs)[mask]).abs().max() < 1e-4

    # A weight update drops the kept keys and values: the next turn starts afresh.
    prompt = formatter.prompt_ids("what is kalu")
    for update in (False, True):
        engine.add(("first",), Request(prompt, 3, seed=0, session="s"), SamplingParams())
        ((_, first),) = engine.step() or engine.step() or engine.step()
        if update:
            engine.update_weights({})
        before = engine.cached_tokens
        engine.add(("next",), Request(prompt + first.token_ids + [1], 2, seed=1, session="s"), SamplingParams())
        while engine.in_flight():
            engine.step()
        assert (engine.cached_tokens > before) == (not update)


def test_limits_cut_observations_never_the_prompt(tiny):
    engine, formatter = engine_for(tiny)
    cfg = RolloutConfig(max_turn_tokens=4, max_obs_tokens=7, max_total_tokens=40, max_turns=10)
    task = Task("t", "what is kalu")
    episodes = rollout(engine, formatter, lambda: WordsEnv(n=30, turns=10), [(task, 0, 1)], cfg).episodes
    ep = episodes[0]
    prompt = formatter.prompt_ids(task.prompt)
    assert ep.token_ids[: len(prompt)] == prompt
    assert len(ep.token_ids) <= cfg.max_total_tokens
    assert ep.finish == "length"
    for t in range(len(ep.trajectory.turns)):
        obs_tokens = [i for i, (turn, m) in enumerate(zip(ep.turn_ids, ep.loss_mask)) if turn == t and m == 0]
        assert len(obs_tokens) <= cfg.max_obs_tokens
        assert sum(1 for turn, m in zip(ep.turn_ids, ep.loss_mask) if turn == t and m == 1) <= cfg.max_turn_tokens

    long_task = Task("long", "what is " + "kalu " * 50)
    (ep,) = rollout(engine, formatter, lambda: WordsEnv(), [(long_task, 0, 1)], cfg).episodes
    assert ep.failed and "max_total_tokens" in ep.error and ep.loss_mask == [0] * len(ep.token_ids)


def test_env_errors_fail_only_their_episode(tiny):
    engine, formatter = engine_for(tiny)
    tasks = [Task("ok", "what is kalu"), Task("bad", "what is kalu"), Task("reset", "what is kalu")]
    items = [(t, i, i) for i, t in enumerate(tasks)]
    make = iter([WordsEnv(fail_on="bad"), WordsEnv(fail_on="bad"), WordsEnv(fail_on="reset")])
    ok, bad, broken = rollout(engine, formatter, lambda: next(make), items, RolloutConfig(max_turn_tokens=3)).episodes
    assert not ok.failed and ok.finish == "done" and len(ok.trajectory.turns) == 3
    assert bad.failed and "step broke" in bad.error
    assert broken.failed and "reset broke" in broken.error


def test_samples_do_not_depend_on_batch_company(tiny):
    engine, _ = engine_for(tiny)
    tok = engine.tokenizer
    a = Request(tok.encode("what is kalu"), 8, seed=5)
    b = Request(tok.encode("what is sone red . no , try again :"), 8, seed=6)
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9)
    alone = engine.generate([a], params)[0]
    together = engine.generate([b, a], params)[1]
    assert alone.token_ids == together.token_ids
    assert alone.logprobs == pytest.approx(together.logprobs, abs=1e-5)


def test_stop_strings_end_the_action(tiny):
    engine, _ = engine_for(tiny)
    tok = engine.tokenizer
    gens = engine.generate(
        [Request(tok.encode("what is kalu"), 30, seed=s) for s in range(16)], SamplingParams(stop=["e"])
    )
    for g in gens:
        text = tok.decode(g.token_ids)
        if g.finish_reason == "stop":
            assert "e" in text and "e" not in tok.decode(g.token_ids[:-1])
        else:
            assert "e" not in tok.decode(g.token_ids, skip_special_tokens=True)
    assert any(g.finish_reason == "stop" for g in gens)


def test_a_worker_counts_where_its_rollout_time_went(tiny_model_dir):
    """Counts are exact; with the reproducible schedule the engine and the envs never run at once."""
    from rl.config import EnvConfig, WorkersConfig
    from rl.episode import Item
    from rl.rollout.workers import RolloutWorker

    env = EnvConfig("lookup", {"max_turns": 3})
    worker = RolloutWorker(str(tiny_model_dir), env, RolloutConfig(max_turn_tokens=4), WorkersConfig(), "cpu")
    tasks = load_tasks(LookupParams(max_turns=3), "train")[:6]
    items = [Item(task, g, 100 * g + k) for g, task in enumerate(tasks) for k in range(2)]
    rolled = worker.rollout(items)
    times = rolled.times
    assert times.episodes == len(items) == len(rolled.episodes) and not any(ep.failed for ep in rolled.episodes)
    sampled = [sum(ep.loss_mask) for ep in rolled.episodes]
    assert times.requests == sum(sampled)  # every engine step samples one token for each request in flight
    assert max(sampled) <= times.calls < sum(sampled)  # continuous batching: requests share steps
    assert 0 < times.engine_s and 0 < times.env_s and times.engine_s + times.env_s <= times.worker_s
    assert 0 < times.worker_s <= times.last_episode_s  # live from the first reset to the last end
    both = times.add(times).metrics()  # two workers that took as long: twice the episodes in the same time
    assert both["throughput/episodes_per_s"] == pytest.approx(2 * times.metrics()["throughput/episodes_per_s"])
    assert both["time/rollout_engine_share"] == pytest.approx(times.metrics()["time/rollout_engine_share"])
    assert both["throughput/in_flight_episodes"] == sum(sampled) / times.calls
