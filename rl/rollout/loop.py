"""Multi-turn rollout: every live episode of a batch advances one turn per batched `generate`.

Token-in/token-out: an episode's token ids only ever grow. Sampled tokens are
appended with loss mask 1 and their sampling logprobs; observation tokens with
loss mask 0. Limits cut observations (and the last action), never the task
prompt; a prompt that does not fit fails its episode. An env that raises fails
only its own episode.
"""

from __future__ import annotations

import signal
import threading
import traceback
from typing import Any, Callable

from envs.base import Env, Trajectory, Turn
from rl.config import RolloutConfig
from rl.episode import PROMPT_TURN, Episode, Item
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import Engine, Request, SamplingParams


def _fail(episode: Episode, where: str) -> None:
    episode.finish = "error"
    episode.traceback = traceback.format_exc().rstrip()
    episode.error = f"{where}: {episode.traceback.splitlines()[-1]}"


class EnvTimeout(BaseException):
    """An env call ran out of time. A BaseException, so an env's own `except Exception` cannot swallow it."""


def call_with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """Run `fn` and return its result, or raise EnvTimeout after `timeout` seconds.

    On the main thread (the trainer's, a Ray actor's) a timer signal interrupts the call:
    nothing is started per call. Elsewhere the call runs in a daemon thread that is left
    behind if it hangs; its env is never used again, and the rollout goes on without it.
    """
    if timeout <= 0:
        return fn()
    if threading.current_thread() is threading.main_thread():

        def on_alarm(signum, frame):
            raise EnvTimeout(f"no answer within {timeout:g}s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    box: dict[str, Any] = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller, which fails the episode
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise EnvTimeout(f"no answer within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def rollout(
    engine: Engine,
    formatter: TurnFormatter,
    make_env: Callable[[], Env],
    items: list[Item],  # one per episode
    cfg: RolloutConfig,
    greedy: bool = False,
) -> list[Episode]:
    tokenizer = formatter.tokenizer
    episodes, envs = [], []
    for task, group, seed in items:
        episode = Episode(Trajectory(task), group, seed)
        env = None
        try:
            env = make_env()
            prompt_ids = formatter.prompt_ids(call_with_timeout(lambda: env.reset(task), cfg.env_timeout_s))
            episode.append(prompt_ids, PROMPT_TURN)
            if len(prompt_ids) >= cfg.max_total_tokens:
                episode.finish, episode.error = (
                    "error",
                    f"prompt has {len(prompt_ids)} tokens, max_total_tokens is {cfg.max_total_tokens}",
                )
        except (Exception, EnvTimeout):
            _fail(episode, "env.reset")
        episodes.append(episode)
        envs.append(env)

    stop = sorted({s for env in envs if env is not None for s in env.stop_strings})
    params = SamplingParams(0.0 if greedy else cfg.temperature, cfg.top_p, cfg.top_k, stop)
    live = [i for i, ep in enumerate(episodes) if not ep.finish]
    turn = 0
    while live:
        requests = [
            Request(
                list(episodes[i].token_ids),
                min(cfg.max_turn_tokens, cfg.max_total_tokens - len(episodes[i].token_ids)),
                episodes[i].seed * 1009 + turn,
            )
            for i in live
        ]
        generations = engine.generate(requests, params)
        for i, gen in zip(live, generations):
            ep, env = episodes[i], envs[i]
            ep.append(gen.token_ids, turn, gen.logprobs)
            action = _cut_at_stop(tokenizer.decode(gen.token_ids, skip_special_tokens=True), env.stop_strings)
            try:
                result = call_with_timeout(lambda: env.step(action), cfg.env_timeout_s)
            except (Exception, EnvTimeout):
                ep.trajectory.turns.append(Turn(action, "", {}))
                _fail(ep, "env.step")
                continue
            ep.trajectory.turns.append(Turn(action, result.observation, result.info))
            if result.done:
                ep.finish = "done"
            elif turn + 1 >= cfg.max_turns:
                ep.finish = "max_turns"
            else:
                ended_with_eos = gen.finish_reason == "eos"
                # room for one action token
                room = cfg.max_total_tokens - len(ep.token_ids) - formatter.wrapper_tokens(ended_with_eos) - 1
                if room < 0:
                    ep.finish = "length"
                else:
                    ep.append(
                        formatter.observation_ids(result.observation, ended_with_eos, min(cfg.max_obs_tokens, room)),
                        turn,
                    )
        live = [i for i in live if not episodes[i].finish]
        turn += 1
    return episodes


def _cut_at_stop(text: str, stop_strings: list[str]) -> str:
    """The action as the env sees it: the text up to and including the first stop string."""
    ends = [text.index(s) + len(s) for s in stop_strings if s in text]
    return text[: min(ends)] if ends else text
