"""This project against TRL's GRPOTrainer on the same work, side by side in one run (CPU); a GPU section.

Run from the repository root:

    python benchmarks/vs_trl.py                 # single-turn, CoCoS prompts (~3 minutes on 2 idle cores)
    python benchmarks/vs_trl.py --task lookup --new-tokens 16   # single-turn, 3-token prompts: overhead-bound
    python benchmarks/vs_trl.py --multi-turn --new-tokens 32    # 2-turn code-correction episodes (~2.5 minutes)
    python benchmarks/vs_trl.py --runs 5 --steps 10
    python benchmarks/vs_trl.py --gpu           # only the GPU section (needs CUDA; under 3 minutes on an H100)

Single-turn comparison. One tiny Qwen2-shaped model directory (rl.run.tiny, built once on the task's text)
is loaded by both systems. Each run is a fresh subprocess (ours, TRL, ours, TRL, ...), so each has its own
peak-RSS figure and neither warms the other's caches. Both do, per optimizer step: sample --tasks prompts
x --group completions of up to --new-tokens tokens (temperature 1, top_p 1, top_k 0, stop only at EOS),
score them, group-normalized advantages (mean and std of the group), one PPO-clipped (0.2/0.2)
policy-gradient step over the whole batch in one micro-batch, loss averaged over all completion tokens of
the batch (ours: token-mean; TRL: loss_type="dapo"), no KL and no reference model (beta=0), AdamW at
constant lr, grad-norm clip 1.0, float32, no activation checkpointing (TRL's GRPOConfig turns it on by
default; it is turned off here, as ours is), no vLLM. Prompts (--task):
  code    CoCoS's MBPP-style turn-1 prompt on the synthetic code tasks (task, asserts, "[BEGIN]"; ~107 tokens
          of this tokenizer); score = the fraction of the task's tests the completion passes (the real
          sandbox; CodeEnv.step on both sides).
  lookup  "what is <key>" (3 tokens); score = answer word == the table's value. Tiny work per step, so this
          measures per-call overhead more than computation.
The envs end an action at a stop string ("[DONE]", "."); TRL's own transformers generation has none, so
this benchmark registers both envs without stop strings (NoStopCode, NoStopLookup) and both sides stop at
EOS or the limit. Ours prefills each distinct prompt once per step and, in the learner, runs each group's
shared prompt once (its keys/values feed every completion of the group, gradients summed): the same
logprobs and gradients (tests/test_learner.py checks both) from fewer token positions. That is why the
gap widens with the prompt's share of the tokens.

Our step: `Trainer.train_step()` (rollout, score, advantages, update, weight
sync to the rollout engine and its probe check), called directly: no run-directory logging of episodes,
no checkpoints, no eval. TRL's step: the time between consecutive `on_step_end` callbacks of
`GRPOTrainer.train()` (generation, scoring, loss, backward, optimizer step, logging every step; no saving,
report_to="none"). The first --warmup steps of each run are not timed; model building, loading and
startup are outside the timing on both sides. Printed per system: median step time over all timed steps
of all runs, median CPU time of the process per step (time.process_time; with one torch thread per run it
moves much less than wall time when other jobs share the cores), generated tokens/s (tokens generated in timed steps /
their time), peak RSS (median over runs of the subprocess's ru_maxrss), and the counts that show the work is the same:
generated tokens (ours: sum of loss masks; TRL: its completion lengths) and optimizer steps (ours: the learner's
scheduler steps; TRL: global_step).

Multi-turn (--multi-turn): the same comparison on CoCoS's code-correction episode (envs/code, synthetic
tasks, 2 turns, no execution feedback): the agent writes code ending at "[DONE]", the env runs it against
the task's asserts in the sandbox and asks for a rewrite, the agent writes again; reward = the last turn's
score (fraction of tests passed). The model is built on the code tasks' text. TRL's GRPOTrainer (1.16) has
two multi-turn routes. `tools=` / `environment_factory=` only continue when the model writes a tool call
that the chat template's response schema parses, and a CoCoS rewrite is not a tool call: a randomly
initialised tiny model would run one turn, which is not the same work. The route that plays an
env-driven episode is `rollout_func` (how TRL's OpenEnv integration runs environments): TRL calls it
with the step's prompts and trains on the prompt ids, completion ids and `env_mask` it returns (0 on
observation tokens: out of the loss). `trl_code_rollout` below is that function, written as a TRL user
would: each turn one batched `model.generate` (stop_strings=["[DONE]"]) over the live episodes, the same
CodeEnv, observations appended as tokens. Its `logprobs` are zeros: without vLLM, and with
`off_policy_mask_threshold` unset (the default), TRL never reads them.
Both sides stop an action at "[DONE]", EOS or --new-tokens tokens and cut observations to --obs-tokens.
Env turns are counted on both sides and printed. With a random model most actions do not parse, so the
sandbox runs little (benchmarks/code_sandbox.py measures it); the comparison is of the trainers.

GPU section (--gpu): a ~0.5B-parameter Qwen2-shaped model (Qwen2-0.5B's shape: 24 layers, hidden 896,
MLP 4864, 14 heads, 2 KV heads, vocab 151936, tied embeddings) built from a config (no download).
  learner   rl.learn.learner.Learner.update (bf16 autocast, float32 master weights) on --gpu-batch sequences of
            --gpu-seq tokens; tokens/s counts every token of every sequence; MFU = 6 * params * tokens/s /
            peak, peak = 989 TFLOP/s (H100/H200 SXM dense bf16).
  decode    rl.rollout.engine.HFEngine.generate, bf16 weights, --gpu-prompts prompts x --gpu-new-tokens tokens (no
            early stop); decode steps/s against the memory-bandwidth bound HBM bandwidth / bytes read per
            step (all weights + the KV cache at mid-generation), bandwidth 3.35 TB/s (H100 SXM) or
            4.8 TB/s (H200).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .`
sys.path.insert(0, str(ROOT / "benchmarks"))  # so the env below is importable as "vs_trl" in the subprocess

from envs import code  # noqa: E402
from envs.lookup import LookupEnv, LookupParams, load_tasks, sample_text  # noqa: E402
from envs.registry import EnvSpec  # noqa: E402


class NoStopLookup(LookupEnv):
    """The lookup env without its "." stop string: generation ends at EOS or the token limit, as in TRL."""

    stop_strings: list[str] = []


class NoStopCode(code.CodeEnv):
    """One CoCoS attempt without the "[DONE]" stop string (TRL's own generation has no stop strings)."""

    stop_strings: list[str] = []


@dataclass
class BenchParams:
    task: str = "code"  # code: CoCoS's MBPP-style prompts (about 100 tokens); lookup: 3-token prompts


CODE = code.CodeParams(dataset="synthetic", max_turns=1)


def make_bench_env(p: BenchParams):
    if p.task == "lookup":
        return NoStopLookup(LookupParams(max_turns=1))
    return NoStopCode(1, "none", False, code.sandbox_config(CODE))


def bench_tasks(p: BenchParams, split: str):
    return load_tasks(LookupParams(max_turns=1), split) if p.task == "lookup" else code.load_tasks(CODE, split)


def bench_text(p: BenchParams) -> list[str]:
    return sample_text(LookupParams()) if p.task == "lookup" else code.sample_text(CODE)


ENV_SPEC = EnvSpec(BenchParams, make_bench_env, bench_tasks, bench_text)


def lookup_score(text: str, answer: str) -> float:
    """The score NoStopLookup.step gives an action (the outcome reward of a one-turn episode)."""
    return float(text.split(".")[0].strip() == answer)


def code_score(env, task, text: str) -> float:
    """The score a one-turn CoCoS episode gets: the fraction of the task's tests the code passes."""
    env.reset(task)
    return env.step(text).info["score"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="subprocess runs per system (alternating)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps of each run")
    p.add_argument("--tasks", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO group)")
    p.add_argument(
        "--new-tokens", type=int, default=64, help="max generated tokens per completion (per action, multi-turn)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (1: steadier on a shared machine)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument(
        "--ours",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for our side (e.g. rollout.env_timeout_s=0); repeatable",
    )
    p.add_argument(
        "--task",
        choices=["code", "lookup"],
        default="code",
        help="single-turn prompts: code (CoCoS's, ~100 tokens) or lookup (3 tokens: overhead-bound)",
    )
    p.add_argument("--multi-turn", action="store_true", help="compare on 2-turn code-correction episodes instead")
    p.add_argument("--turns", type=int, default=2, help="multi-turn: attempts per episode")
    p.add_argument("--obs-tokens", type=int, default=64, help="multi-turn: an observation is cut to this many tokens")
    p.add_argument("--gpu", action="store_true", help="run only the GPU section")
    p.add_argument("--gpu-batch", type=int, default=32)
    p.add_argument("--gpu-seq", type=int, default=1024)
    p.add_argument("--gpu-micro", type=int, default=8)
    p.add_argument("--gpu-prompts", type=int, default=64)
    p.add_argument("--gpu-prompt-len", type=int, default=128)
    p.add_argument("--gpu-new-tokens", type=int, default=128)
    p.add_argument("--gpu-smoke", action="store_true", help=argparse.SUPPRESS)  # the GPU section's code, tiny, on CPU
    p.add_argument("--profile", action="store_true", help="worker only: print a cProfile summary of the timed steps")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    return p.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# ---------------------------------------------------------------- workers (one system, one subprocess)


def run_ours(args) -> dict:
    from rl.config import load_config
    from rl.run.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="vs_trl-ours-")
    if args.multi_turn:
        task = [
            "env.name=code",
            f"env.params={{dataset: synthetic, max_turns: {args.turns}, feedback: none}}",
            f"rollout.max_turns={args.turns}",
            f"rollout.max_obs_tokens={args.obs_tokens}",
            "rollout.max_total_tokens=2048",
            "reward=[{name: outcome}]",
        ]
    else:
        task = [
            "env.name=vs_trl",
            f"env.params={{task: {args.task}}}",
            f"rollout.max_total_tokens={args.new_tokens + 512}",
        ]
    cfg = load_config(
        ROOT / "configs/lookup.yaml",
        [
            f"model.path={args.model_dir}",
            *task,
            f"rollout.tasks_per_step={args.tasks}",
            f"rollout.group_size={args.group}",
            f"rollout.max_turn_tokens={args.new_tokens}",
            "rollout.temperature=1.0",
            "rollout.top_p=1.0",
            "rollout.top_k=0",
            "algo.loss_agg=token-mean",
            "algo.kl_coef=0.0",
            "algo.norm_by_std=true",
            f"learner.lr={args.lr}",
            f"learner.micro_batch_size={args.tasks * args.group}",
            "learner.optim_steps_per_batch=1",
            "learner.max_grad_norm=1.0",
            "learner.device=cpu",
            f"steps={args.steps}",
            "save_every=0",
            "eval_every=0",
            "log_episodes=false",
            f"run_dir={run_dir}",
            *args.ours,
        ],
    )
    trainer = Trainer(cfg)
    times, cpu, tokens, turns = [], [], [], []
    prof = None
    for step in range(1, args.steps + 1):
        if args.profile and step == args.warmup + 1:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = trainer.train_step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        played = metrics["episodes/count"] - metrics["episodes/failed"]
        tokens.append(round(metrics["episodes/policy_tokens"] * played))
        turns.append(round(metrics["episodes/turns"] * played))
        breakdown = {k: metrics[k] for k in ("time/rollout_wait", "time/update", "time/sync")}
        if step > args.warmup:
            for k, v in breakdown.items():
                trainer_breakdown.setdefault(k, []).append(v)
    if prof:
        prof.disable()
        print_profile(prof)
    opt_steps = trainer.learner.scheduler.last_epoch  # scheduler.step() once per optimizer step
    trainer.close()
    return {
        "times": times,
        "cpu": cpu,
        "tokens": tokens,
        "turns": turns,
        "opt_steps": opt_steps,
        "breakdown": {k: statistics.median(v) for k, v in trainer_breakdown.items()},
    }


trainer_breakdown: dict[str, list[float]] = {}


def run_trl(args) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    turns: list[int] = []
    if args.multi_turn:
        params = code.CodeParams(dataset="synthetic", max_turns=args.turns, feedback="none")
        tasks = code.load_tasks(params, "train")
        dataset = Dataset.from_list([{"prompt": t.prompt} for t in tasks])
        rollout_func = trl_code_rollout(args, params, {t.prompt: t for t in tasks}, turns)

        def reward(completions, final_score, **kwargs):
            return final_score
    elif args.task == "lookup":
        tasks = bench_tasks(BenchParams("lookup"), "train")
        # Our TaskOrder takes --tasks distinct tasks per step; TRL's sampler takes --tasks distinct prompts per batch.
        dataset = Dataset.from_list([{"prompt": t.prompt, "answer": t.metadata["answer"]} for t in tasks])
        rollout_func = None

        def reward(completions, answer, **kwargs):
            return [lookup_score(c, a) for c, a in zip(completions, answer)]
    else:
        tasks = bench_tasks(BenchParams("code"), "train")
        dataset = Dataset.from_list([{"prompt": t.prompt, "index": i} for i, t in enumerate(tasks)])
        env = make_bench_env(BenchParams("code"))
        rollout_func = None

        def reward(completions, index, **kwargs):
            return [code_score(env, tasks[i], c) for c, i in zip(completions, index)]

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vs_trl-trl-"),
        per_device_train_batch_size=args.tasks * args.group,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        num_iterations=1,
        max_completion_length=args.turns * (args.new_tokens + args.obs_tokens) if args.multi_turn else args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=args.steps,
        bf16=False,
        fp16=False,
        # TRL's GRPOConfig turns it on by default; ours is off: same work means off on both
        gradient_checkpointing=False,
        use_cpu=True,
        use_vllm=False,
        model_init_kwargs={"dtype": torch.float32},
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    times, cpu, tokens, t_last, c_last = [], [], [], [None], [None]
    prof = [None]

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            t_last[0], c_last[0] = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            now, now_cpu = time.perf_counter(), time.process_time()
            times.append(now - t_last[0])
            cpu.append(now_cpu - c_last[0])
            if args.profile and state.global_step == args.warmup:
                import cProfile

                prof[0] = cProfile.Profile()
                prof[0].enable()
            t_last[0], c_last[0] = (
                time.perf_counter(),
                time.process_time(),
            )  # the callbacks' own work is outside the timing

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                tokens.append(round(logs["completions/mean_length"] * args.tasks * args.group))

    trainer = GRPOTrainer(
        model=args.model_dir,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        callbacks=[Clock()],
        rollout_func=rollout_func,
    )
    trainer.train()
    if prof[0]:
        prof[0].disable()
        print_profile(prof[0])
    return {
        "times": times,
        "cpu": cpu,
        "tokens": tokens,
        "turns": turns,
        "opt_steps": trainer.state.global_step,
        "breakdown": {},
    }


def trl_code_rollout(args, params, task_of_prompt: dict, turns: list[int]):
    """TRL's `rollout_func` for the code-correction episode: batched generate per turn, CodeEnv steps."""
    import torch
    from transformers import GenerationConfig

    def rollout_func(prompts: list[str], trainer) -> dict:
        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        gen_cfg = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=args.new_tokens,
            stop_strings=code.CodeEnv.stop_strings,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        envs = [code.make_env(params) for _ in prompts]
        prompt_ids = [
            tok.encode(env.reset(task_of_prompt[p]), add_special_tokens=False) for env, p in zip(envs, prompts)
        ]
        completion = [[] for _ in prompts]
        env_mask = [[] for _ in prompts]
        final_score = [0.0] * len(prompts)
        live, played, done = list(range(len(prompts))), 0, set()
        for turn in range(args.turns):
            contexts = [prompt_ids[i] + completion[i] for i in live]
            width = max(map(len, contexts))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(c)) + c for c in contexts])
            attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=attention, generation_config=gen_cfg, tokenizer=tok)
            for row, i in enumerate(live):
                action_ids = out[row, width:].tolist()
                if tok.eos_token_id in action_ids:  # EOS ends the action; after "[DONE]" it is generate's padding
                    end = action_ids.index(tok.eos_token_id)
                    stopped = any(s in tok.decode(action_ids[:end]) for s in code.CodeEnv.stop_strings)
                    action_ids = action_ids[: end if stopped else end + 1]
                completion[i] += action_ids
                env_mask[i] += [1] * len(action_ids)
                result = envs[i].step(tok.decode(action_ids, skip_special_tokens=True))
                played += 1
                final_score[i] = result.info["score"]
                if result.done:
                    done.add(i)
                else:
                    obs = tok.encode(result.observation, add_special_tokens=False)[: args.obs_tokens]
                    completion[i] += obs
                    env_mask[i] += [0] * len(obs)
            live = [i for i in live if i not in done]
        turns.append(played)
        logprobs = [[0.0] * len(c) for c in completion]
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion,
            "logprobs": logprobs,
            "env_mask": env_mask,
            "final_score": final_score,
        }

    return rollout_func


def print_profile(prof) -> None:
    import io
    import pstats

    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(30)
    print(s.getvalue(), file=sys.stderr)


def worker_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = (run_ours if args.worker == "ours" else run_trl)(args)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out))


# ---------------------------------------------------------------- the comparison (parent process)


def compare(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rl.config import TinyModelConfig
    from rl.run.tiny import build_tiny_model

    hf_logging.disable_progress_bar()
    model_dir = tempfile.mkdtemp(prefix="vs_trl-model-")
    tiny = TinyModelConfig(
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        heads=args.heads,
        kv_heads=args.kv_heads,
        vocab_size=args.vocab,
    )
    text = bench_text(BenchParams("code" if args.multi_turn else args.task))
    build_tiny_model(model_dir, text, tiny, seed=0)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    import transformers
    import trl

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads per run {args.threads}"
    )
    episode = (
        f"{args.turns}-turn code-correction episodes (actions <= "
        f"{args.new_tokens} tokens, observations <= {args.obs_tokens})"
        if args.multi_turn
        else f"{args.task} prompts, completions of <= {args.new_tokens} tokens"
    )
    print(
        f"model {n_params / 1e6:.2f}M params, vocab {len(AutoTokenizer.from_pretrained(model_dir))}; per step "
        f"{args.tasks} prompts x {args.group} {episode}; {args.steps} steps per run "
        f"({args.warmup} untimed), {args.runs} runs per system, "
        f"alternating; our overrides: {' '.join(args.ours) or 'none'}"
    )
    passthrough = [
        "--steps",
        args.steps,
        "--warmup",
        args.warmup,
        "--tasks",
        args.tasks,
        "--group",
        args.group,
        "--new-tokens",
        args.new_tokens,
        "--threads",
        args.threads,
        "--lr",
        args.lr,
        "--model-dir",
        model_dir,
        "--turns",
        args.turns,
        "--obs-tokens",
        args.obs_tokens,
        "--task",
        args.task,
        *(["--multi-turn"] if args.multi_turn else []),
        *[x for o in args.ours for x in ("--ours", o)],
    ]
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    for r in range(args.runs):
        for system in ("ours", "trl"):
            cmd = [sys.executable, __file__, "--worker", system, *map(str, passthrough)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{system} run {r + 1} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            res = json.loads(lines[-1][len("RESULT ") :])
            results[system].append(res)
            print(
                f"  run {r + 1} {system:<4} median step {statistics.median(res['times'][args.warmup :]):.3f}s, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB"
            )

    rows = {}
    for system, runs in results.items():
        times = [t for res in runs for t in res["times"][args.warmup :]]
        toks = [n for res in runs for n in res["tokens"][args.warmup :]]
        rows[system] = {
            "step": statistics.median(times),
            "cpu": statistics.median(c for res in runs for c in res["cpu"][args.warmup :]),
            "tok_s": sum(toks) / sum(times),
            "rss": statistics.median(res["peak_rss_mb"] for res in runs),
            "tokens": sum(n for res in runs for n in res["tokens"]),
            "timed_tokens": sum(toks),
            "opt_steps": sum(res["opt_steps"] for res in runs),
            "turns": sum(n for res in runs for n in res["turns"]) if args.multi_turn else None,
            "timed_steps": len(times),
        }
    turns_col = f"{'env turns':>11}" if args.multi_turn else ""
    print(
        f"\n{'system':<22}{'step (s)':>10}{'CPU s/step':>12}{'gen tok/s':>11}"
        f"{'peak RSS (MB)':>15}{'gen tokens':>12}{turns_col}{'opt steps':>11}{'timed steps':>13}"
    )
    for system, name in (("ours", "selfcorrect"), ("trl", f"TRL GRPOTrainer {trl.__version__}")):
        x = rows[system]
        turns = f"{x['turns']:>11}" if args.multi_turn else ""
        print(
            f"{name:<22}{x['step']:>10.3f}{x['cpu']:>12.3f}{x['tok_s']:>11.0f}{x['rss']:>15.0f}{x['tokens']:>12}{turns}{x['opt_steps']:>11}{x['timed_steps']:>13}"
        )
    o, t = rows["ours"], rows["trl"]
    ratio = o["step"] / t["step"]
    turns = f"{o['turns'] / t['turns']:>11.2f}" if args.multi_turn else ""
    print(
        f"{'ratio ours/TRL':<22}{ratio:>10.3f}{o['cpu'] / t['cpu']:>12.3f}"
        f"{o['tok_s'] / t['tok_s']:>11.2f}{o['rss'] / t['rss']:>15.2f}"
        f"{o['tokens'] / t['tokens']:>12.3f}{turns}{o['opt_steps'] / t['opt_steps']:>11.2f}"
    )
    target = "the single-turn target, for reference" if args.multi_turn else "single-turn target"
    print(
        f"\nstep time ours <= 0.8 x TRL ({target}; aim 0.5): "
        f"{'PASS' if ratio <= 0.8 else 'FAIL'} (wall-time ratio {ratio:.3f}; "
        f"CPU-time ratio {o['cpu'] / t['cpu']:.3f}, the steadier one on a shared machine)"
    )
    bd = {k: statistics.median(res["breakdown"][k] for res in results["ours"]) for k in results["ours"][0]["breakdown"]}
    print("ours, median per step: " + ", ".join(f"{k} {v:.3f}s" for k, v in bd.items()))


# ---------------------------------------------------------------- GPU section

PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16 (no sparsity)


def hbm_bandwidth(name: str) -> float:
    return 4.8e12 if "H200" in name else 3.35e12  # H200 SXM 4.8 TB/s, H100 SXM 3.35 TB/s


def gpu_section(args) -> None:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    from envs.base import Task, Trajectory
    from rewards.base import Reward
    from rl.batch import Batch
    from rl.config import AlgoConfig, LearnerConfig, TinyModelConfig
    from rl.episode import Episode
    from rl.learn.learner import Learner
    from rl.rollout.engine import HFEngine, Request, SamplingParams
    from rl.run.tiny import train_tokenizer

    smoke = args.gpu_smoke  # a check of this code on CPU with a 2-layer model; its figures mean nothing
    if not torch.cuda.is_available() and not smoke:
        print("GPU section skipped: no CUDA device")
        return
    hf_logging.disable_progress_bar()
    dev = torch.device("cpu" if smoke else "cuda")
    name = "CPU smoke test" if smoke else torch.cuda.get_device_name(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    bw = hbm_bandwidth(name)
    model_dir = tempfile.mkdtemp(prefix="vs_trl-gpu-")
    tokenizer = train_tokenizer(sample_text(LookupParams()), TinyModelConfig(vocab_size=512))
    config = Qwen2Config(
        vocab_size=1000 if smoke else 151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=2 if smoke else 24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(0)
    vocab = config.vocab_size

    def timed(fn, warmup=2, iters=5):
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(iters):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    # learner
    learner = Learner(
        model_dir,
        LearnerConfig(lr=1e-6, micro_batch_size=args.gpu_micro, device=dev.type),
        AlgoConfig(),
        temperature=1.0,
    )
    n_params = sum(p.numel() for p in learner.model.parameters())
    episodes = []
    for i in range(args.gpu_batch):
        n = args.gpu_seq
        ep = Episode(trajectory=Trajectory(Task(id=str(i), prompt="")), group=i // 8, seed=i)
        ep.token_ids = [rng.randrange(vocab) for _ in range(n)]
        ep.loss_mask = [0] * (n // 4) + [1] * (n - n // 4)
        ep.logprobs = [0.0] * (n // 4) + [-rng.random() * 5 for _ in range(n - n // 4)]
        ep.reward = Reward(process=[], outcome=rng.random())
        episodes.append(ep)
    updates = Batch.from_episodes(episodes)
    t_learn = timed(lambda learner=learner: learner.update(updates))
    learn_tokens = args.gpu_batch * args.gpu_seq
    learn_tok_s = learn_tokens / t_learn
    mfu = 6 * n_params * learn_tok_s / PEAK_BF16_FLOPS
    peak_learn = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    del learner
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # decode
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    engine = HFEngine(model, AutoTokenizer.from_pretrained(model_dir), dev)
    eos = tokenizer.eos_token_id
    requests = [
        Request(
            [rng.choice([t for t in range(1, 512) if t != eos]) for _ in range(args.gpu_prompt_len)],
            args.gpu_new_tokens,
            seed=i,
        )
        for i in range(args.gpu_prompts)
    ]
    params = SamplingParams(temperature=1.0)
    count = []
    engine.eos_ids = set()  # never stop early: every row decodes --gpu-new-tokens tokens
    t_dec = timed(
        lambda: count.append(sum(len(g.token_ids) for g in engine.generate(requests, params))), warmup=1, iters=3
    )
    dec_tokens = count[-1]
    weight_bytes = 2 * n_params
    kv_bytes = (
        2
        * 2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * (config.hidden_size // config.num_attention_heads)
        * (args.gpu_prompt_len + args.gpu_new_tokens // 2)
        * args.gpu_prompts
    )  # K and V, bf16, mid-generation
    bound_steps = bw / (weight_bytes + kv_bytes)
    steps_s = args.gpu_new_tokens / t_dec
    print(
        f"\nGPU: {name}, model {n_params / 1e6:.0f}M params (Qwen2-0.5B "
        f"shape, vocab {vocab}), peak bf16 {PEAK_BF16_FLOPS / 1e12:.0f} "
        f"TFLOP/s, HBM {bw / 1e12:.2f} TB/s"
    )
    print(f"{'benchmark':<12}{'seconds':>9}{'tokens':>9}{'tok/s':>10}  figure of merit")
    print(
        f"{'learner':<12}{t_learn:>9.3f}{learn_tokens:>9}{learn_tok_s:>10.0f}  MFU {100 * mfu:.1f}% (6*N*tok/s / peak; "
        f"batch {args.gpu_batch} x {args.gpu_seq} tokens, micro "
        f"{args.gpu_micro}, bf16 autocast, peak mem {peak_learn:.1f} GiB)"
    )
    print(
        f"{'decode':<12}{t_dec:>9.3f}{dec_tokens:>9}{dec_tokens / t_dec:>10.0f}"
        f"  {steps_s:.0f} steps/s vs bandwidth bound "
        f"{bound_steps:.0f} steps/s ({100 * steps_s / bound_steps:.1f}"
        f"%; {args.gpu_prompts} prompts x {args.gpu_prompt_len} + "
        f"{args.gpu_new_tokens} tokens, bf16 weights {weight_bytes / 1e9:.2f} GB + KV {kv_bytes / 1e9:.2f} GB per step)"
    )


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.worker:
        worker_main(ARGS)
    elif ARGS.gpu or ARGS.gpu_smoke:
        gpu_section(ARGS)
    else:
        compare(ARGS)
        import torch

        if not ARGS.multi_turn:
            if torch.cuda.is_available():
                gpu_section(ARGS)
            else:
                print(
                    "\nGPU section: skipped (no CUDA device); run `python benchmarks/vs_trl.py --gpu` on a GPU machine"
                )
