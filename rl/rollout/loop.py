"""Multi-turn rollout: every episode plays on its own, from reset to its last turn, as an asyncio task.

An episode asks the engine for its next action whenever it is ready; the engine batches whatever is
asked continuously (a request joins the running batch at the next token) and one driver task steps
it. Env calls run at the same time as each other, on their own threads (an env may also define
`async def reset/step`), at most `rollout.env_workers` at once, each cut off after
`rollout.env_timeout_s`, and all of an episode's together after `rollout.episode_env_s`. A failing,
hanging or slow env fails only its own episode; the others go on.

`rollout.schedule` says when the engine steps:
  reproducible  between two engine steps, every env call in flight has answered. Which requests
                share a step then depends on the seeds alone, never on timing, so a seed fixes the
                episodes to the last bit. Env calls still run together, and no turn waits for the
                longest generation of the others.
  overlap       the engine never waits for envs: the fastest. Which requests share a step depends on
                timing, so logprobs may differ in the last bits from run to run (and, rarely, a token).
  lockstep      every episode's turn t is generated as one batch, and turn t + 1 starts when every
                episode's env has answered: the classic multi-turn loop, for comparison.

Token-in/token-out: an episode's token ids only ever grow. Sampled tokens are appended with loss
mask 1 and their sampling logprobs; observation tokens with loss mask 0. Limits cut observations
(and the last action), never the task prompt; a prompt that does not fit fails its episode. Each
turn samples from its own seed (the episode's, and the turn), so the order in which episodes
finish changes none of them.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import queue
import threading
import time
import traceback
from dataclasses import replace
from typing import Any, Callable

from envs.base import Env, Trajectory, Turn
from rl.config import RolloutConfig
from rl.episode import PROMPT_TURN, Episode, Item
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import Engine, Generation, Request, SamplingParams
from rl.rollout.timing import Rollout, RolloutTimes


class EnvTimeout(Exception):
    """An env call, or a whole episode, ran out of time."""


def rollout(
    engine: Engine,
    formatter: TurnFormatter,
    make_env: Callable[[], Env],
    items: list[Item],  # one per episode
    cfg: RolloutConfig,
    greedy: bool = False,
) -> Rollout:
    """Play one episode per item; the episodes come back in the order of the items."""

    async def once() -> Rollout:
        player = Player(engine, formatter, make_env, cfg)
        rolled = await player.play_all(items, greedy)
        await player.driver  # ends with the last episode; raises what the engine raised
        return rolled

    return asyncio.run(once())


class Player:
    """Plays episodes on one engine. `play_all` may be called again before earlier calls end: their episodes
    share the engine's batch and one driver task (the rollout workers of fully asynchronous training add
    GRPO groups this way as the staleness bound admits them)."""

    def __init__(self, engine: Engine, formatter: TurnFormatter, make_env, cfg: RolloutConfig):
        self.engine, self.formatter, self.make_env, self.cfg = engine, formatter, make_env, cfg
        self.times = RolloutTimes()  # since the player was made; `worker_s` counts the time any episode was live
        self.asked: dict[Any, asyncio.Future] = {}  # request key -> its generation, once the engine has it
        # requests not yet given to the engine: they go in key order before its next step (lockstep: once the
        # batch in flight has ended), so the order in which envs answered never reaches the engine
        self.held: list[tuple] = []
        self.env_calls = 0  # env calls started and not answered (or waiting for a slot)
        self.env_since = 0.0  # when env_calls last went from 0 to 1
        self.env_slots = asyncio.Semaphore(cfg.env_workers)
        self.changed = asyncio.Event()  # set when a request, an env answer or an episode's end arrives
        self.live = 0  # episodes not over yet
        self.live_since = 0.0  # when live last went from 0 up
        self.numbers = itertools.count()  # episode numbers: request keys and sessions, unique across calls
        self.driver: asyncio.Task | None = None

    async def play_all(self, items: list[Item], greedy: bool = False) -> Rollout:
        start = time.perf_counter()
        before = self.times_now()
        episodes = [Episode(Trajectory(task), group, seed) for task, group, seed in items]
        temperature = 0.0 if greedy else self.cfg.temperature
        if self.live == 0:
            self.live_since = start
        self.live += len(episodes)
        plays = [asyncio.create_task(self.play(next(self.numbers), ep, temperature)) for ep in episodes]
        if self.driver is None or self.driver.done():
            # It starts after every episode has reached its first env call: the first step sees them all.
            self.driver = asyncio.create_task(self.drive())
        await asyncio.gather(*plays)
        times = self.times_now().since(before)
        times.last_episode_s = time.perf_counter() - start
        times.episodes = len(episodes)
        return Rollout(episodes, times)

    def times_now(self) -> RolloutTimes:
        """`times`, with the time live so far and the engine's token counts."""
        busy = time.perf_counter() - self.live_since if self.live else 0.0
        return replace(
            self.times,
            worker_s=self.times.worker_s + busy,
            prompt_tokens=self.engine.prompt_tokens,
            cached_tokens=self.engine.cached_tokens,
        )

    # ------------------------------------------------------------------ one episode

    async def play(self, i: int, episode: Episode, temperature: float) -> None:
        try:
            await self.play_turns(i, episode, temperature)
        finally:
            self.engine.end_session(i)
            self.live -= 1
            if self.live == 0:
                self.times.worker_s += time.perf_counter() - self.live_since
            self.changed.set()

    async def play_turns(self, i: int, episode: Episode, temperature: float) -> None:
        cfg, formatter = self.cfg, self.formatter
        env_spent = [0.0]  # seconds of this episode's env calls so far
        try:
            env = self.make_env()
            prompt_ids = formatter.prompt_ids(await self.env_call(env.reset, episode.trajectory.task, env_spent))
        except Exception:
            return _fail(episode, "env.reset")
        episode.append(prompt_ids, PROMPT_TURN)
        if len(prompt_ids) >= cfg.max_total_tokens:
            episode.finish = "error"
            episode.error = f"prompt has {len(prompt_ids)} tokens, max_total_tokens is {cfg.max_total_tokens}"
            return
        params = SamplingParams(temperature, cfg.top_p, cfg.top_k, tuple(env.stop_strings))
        for turn in range(cfg.max_turns):
            budget = min(cfg.max_turn_tokens, cfg.max_total_tokens - len(episode.token_ids))
            request = Request(list(episode.token_ids), budget, episode.seed * 1009 + turn, session=i)
            gen = await self.generate((i, turn), request, params)
            episode.append(gen.token_ids, turn, gen.logprobs, gen.versions)
            action = _cut_at_stop(formatter.tokenizer.decode(gen.token_ids, skip_special_tokens=True), params.stop)
            try:
                result = await self.env_call(env.step, action, env_spent)
            except Exception:
                episode.trajectory.turns.append(Turn(action, "", {}))
                return _fail(episode, "env.step")
            episode.trajectory.turns.append(Turn(action, result.observation, result.info))
            if result.done or turn + 1 == cfg.max_turns:
                episode.finish = "done" if result.done else "max_turns"
                return
            ended_with_eos = gen.finish_reason == "eos"
            # room for one action token
            room = cfg.max_total_tokens - len(episode.token_ids) - formatter.wrapper_tokens(ended_with_eos) - 1
            if room < 0:
                episode.finish = "length"
                return
            episode.append(
                formatter.observation_ids(result.observation, ended_with_eos, min(cfg.max_obs_tokens, room)), turn
            )

    async def generate(self, key, request: Request, params: SamplingParams) -> Generation:
        self.asked[key] = asyncio.get_running_loop().create_future()
        self.held.append((key, request, params))
        self.changed.set()
        return await self.asked[key]

    async def env_call(self, fn: Callable, arg, spent: list[float]) -> Any:
        """`fn(arg)` on its own thread (or awaited, if it is a coroutine function), within `env_timeout_s` and
        what is left of the episode's `episode_env_s`; the call's time is added to `spent[0]`."""
        cfg = self.cfg
        limits = [(cfg.env_timeout_s, f"no answer within {cfg.env_timeout_s:g}s")] if cfg.env_timeout_s > 0 else []
        if cfg.episode_env_s > 0:
            limits.append((cfg.episode_env_s - spent[0], f"the episode's env time ran past {cfg.episode_env_s:g}s"))
        timeout, why = min(limits) if limits else (None, "")
        if self.env_calls == 0:
            self.env_since = time.perf_counter()
        self.env_calls += 1
        try:
            async with self.env_slots:
                start = time.perf_counter()
                try:
                    if timeout is not None and timeout <= 0:
                        raise asyncio.TimeoutError
                    call = fn(arg) if inspect.iscoroutinefunction(fn) else _THREADS.run(fn, arg)
                    return await asyncio.wait_for(call, timeout)
                except asyncio.TimeoutError:
                    raise EnvTimeout(why) from None
                finally:
                    spent[0] += time.perf_counter() - start
        finally:
            self.env_calls -= 1
            if self.env_calls == 0:
                self.times.env_s += time.perf_counter() - self.env_since
            self.changed.set()

    # ------------------------------------------------------------------ the engine

    async def drive(self) -> None:
        """Step the engine while episodes play, as the schedule allows; hand each finished generation over.
        An engine that fails fails the rollout: every episode waiting for it gets the error."""
        try:
            await self._drive()
        except BaseException as e:
            for asked in self.asked.values():
                if not asked.done():
                    asked.set_exception(e)
            raise

    async def _drive(self) -> None:
        engine, schedule = self.engine, self.cfg.schedule
        while self.live:
            if schedule != "overlap" and self.env_calls:
                await self.wait_for_change()
                continue
            if self.held and (schedule != "lockstep" or engine.in_flight() == 0):
                for key, request, params in sorted(self.held, key=lambda h: h[0]):
                    engine.add(key, request, params)
                self.held = []
            if engine.in_flight() == 0:
                await self.wait_for_change()
                continue
            start = time.perf_counter()
            self.times.requests += engine.in_flight()
            finished = engine.step()
            self.times.engine_s += time.perf_counter() - start
            self.times.calls += 1
            for key, gen in finished:
                self.asked.pop(key).set_result(gen)
            await asyncio.sleep(0)  # let the episodes whose generation came take their turn

    async def wait_for_change(self) -> None:
        self.changed.clear()
        await self.changed.wait()


class _Threads:
    """Daemon threads for env calls, kept from call to call: starting a thread costs more than many an env's step.

    A call that hangs keeps its thread (its env is never used again, and it cannot keep the process from
    exiting); the next calls go to other threads, started as needed.
    """

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = 0  # threads waiting for a job, less the jobs queued for them
        self.lock = threading.Lock()

    def run(self, fn: Callable, arg) -> asyncio.Future:
        """`fn(arg)` on one of the threads; its result (or exception) in the returned future of the running loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.lock:
            start = self.idle == 0
            self.idle -= not start
        self.jobs.put((loop, future, fn, arg))
        if start:
            threading.Thread(target=self._serve, daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            loop, future, fn, arg = self.jobs.get()
            try:
                outcome = (fn(arg), None)
            except Exception as e:  # handed to the episode, which fails
                outcome = (None, e)
            except BaseException as e:  # an env's sys.exit() ends its episode, not the rollout
                outcome = (None, RuntimeError(f"the env raised {type(e).__name__}: {e}"))
            try:
                loop.call_soon_threadsafe(_deliver, future, *outcome)
            except RuntimeError:  # the rollout is over (it gave up on this call): nobody is waiting
                pass
            with self.lock:
                self.idle += 1


def _deliver(future: asyncio.Future, result, error) -> None:
    if not future.done():  # else the call was cut off by its timeout
        future.set_exception(error) if error is not None else future.set_result(result)


_THREADS = _Threads()


def _fail(episode: Episode, where: str) -> None:
    episode.finish = "error"
    episode.traceback = traceback.format_exc().rstrip()
    episode.error = f"{where}: {episode.traceback.splitlines()[-1]}"


def _cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    """The action as the env sees it: the text up to and including the first stop string."""
    ends = [text.index(s) + len(s) for s in stop_strings if s in text]
    return text[: min(ends)] if ends else text
