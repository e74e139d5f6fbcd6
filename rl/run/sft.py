"""Supervised warm start with TRL's SFTTrainer, on the same tokens the rollouts produce.

    python -m rl sft configs/tiny_search.yaml                         # the SFT stage alone
    python -m rl sft configs/cocos_qwen2.5-1.5b.yaml sft.data=demos.jsonl

Examples are whole trajectories: the env's scripted demonstrations (`sft.data: demos`,
see envs/*/demos.py: keep and fix pairs, AdvChain's corrections) or a JSONL file of
trajectories (the trainer's episode logs, `Trajectory.to_dict` lines, or chat
"messages": the first user turn is the prompt, each assistant message an action and
the message after it its observation). Each is tokenized exactly as the rollout would
see it (rl/rollout/chat.py: the prompt rendered once, actions and observations appended), and
the loss covers the actions only: TRL builds the labels from our `assistant_masks`.
A demo's wrong steps ("mistake" turns) stay context unless `sft.train_on_mistakes`.

With `sft.stop_score`, the warm start ends early, at the first check where greedy
episodes on RL's train tasks reach that score. A tiny model learns to copy names and
numbers from its context in a sudden jump whose step varies from seed to seed (550 to
675 steps in the demo's search world); stopping on what the model can do rather than
after a fixed step count hands RL a policy that already earns reward, whatever the seed.

The result is a Hugging Face directory, `run_dir/sft/model`, that RL starts from (rl/model.py decides
when it is made).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields
from pathlib import Path

from transformers import TrainerCallback

from envs.base import Task, Trajectory, Turn
from envs.jsonl import numbered_jsonl
from rl.config import Config
from rl.episode import Item
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout

log = logging.getLogger(__name__)


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """Trajectories from a JSONL file of episodes, trajectories or chat messages (module docstring)."""
    out = []
    for n, record in numbered_jsonl(path):
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            if "messages" in record:
                out.append(_from_messages(record["messages"], f"{Path(path).stem}-{n}"))
            else:
                out.append(Trajectory.from_dict(record.get("trajectory", record)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a trajectory, episode or messages line ({e})") from e
    if not out:
        raise ValueError(f"{path}: no trajectories")
    return out


def _from_messages(messages: list[dict], task_id: str) -> Trajectory:
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if not first:
        raise ValueError("a conversation needs a prompt and at least one assistant message")
    turns = []
    for i in range(first, len(messages)):
        if messages[i]["role"] == "assistant":
            answered = i + 1 < len(messages) and messages[i + 1]["role"] != "assistant"
            after = messages[i + 1]["content"] if answered else ""
            turns.append(Turn(messages[i]["content"], after))
    return Trajectory(Task(task_id, messages[:first]), turns)


def tokenize(
    trajectory: Trajectory,
    formatter: TurnFormatter,
    stop_strings: list[str],
    max_obs_tokens: int,
    train_on_mistakes: bool,
) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_masks) of one trajectory, token for token what a rollout of it holds.

    An action is encoded on its own, as the engine would have sampled it; an action that no stop
    string ends gets EOS, so the model learns to stop there.
    """
    tok = formatter.tokenizer
    ids = formatter.prompt_ids(trajectory.task.prompt)
    mask = [0] * len(ids)
    for t, turn in enumerate(trajectory.turns):
        action = tok.encode(turn.action, add_special_tokens=False)
        ends_with_eos = not any(turn.action.endswith(s) for s in stop_strings)
        if ends_with_eos:
            action.append(tok.eos_token_id)
        learn = train_on_mistakes or turn.info.get("demo") != "mistake"
        ids += action
        mask += [int(learn)] * len(action)
        if t < len(trajectory.turns) - 1:
            obs = formatter.observation_ids(turn.observation, ends_with_eos, max_obs_tokens)
            ids += obs
            mask += [0] * len(obs)
    return ids, mask


def _demo_params(cfg: Config):
    return cfg.env.resolve(cfg.sft.env_params, "sft.env_params")


def load_trajectories(cfg: Config) -> list[Trajectory]:
    """The SFT stage's trajectories: the env's demonstrations, or those of the `sft.data` file."""
    if cfg.sft.data != "demos":
        return read_trajectories(cfg.sft.data)
    spec, params = _demo_params(cfg)
    if spec.demonstrations is None:
        raise ValueError(
            f"env {cfg.env.name!r} has no scripted demonstrations: give sft.data=PATH of a trajectories JSONL"
        )
    return spec.demonstrations(params, cfg.sft.demos, cfg.seed, cfg.sft.keep_share, cfg.sft.hesitation)


def trajectory_text(trajectory: Trajectory) -> str:
    """The whole episode as plain text, for training a tiny model's tokenizer on what it will read and write."""
    prompt = trajectory.task.prompt
    prompt = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return prompt + "".join(t.action + t.observation for t in trajectory.turns)


def sft_examples(cfg: Config, tokenizer, trajectories: list[Trajectory]) -> tuple[list[dict], dict[str, float]]:
    """The tokenized examples and a few statistics about them."""
    spec, params = _demo_params(cfg)
    stop_strings = spec.make_env(params).stop_strings
    formatter = TurnFormatter(tokenizer, cfg.rollout.observation_role)
    examples, too_long = [], 0
    for trajectory in trajectories:
        ids, mask = tokenize(trajectory, formatter, stop_strings, cfg.rollout.max_obs_tokens, cfg.sft.train_on_mistakes)
        if len(ids) > cfg.sft.max_length or not any(mask):
            too_long += len(ids) > cfg.sft.max_length
            continue
        examples.append({"input_ids": ids, "assistant_masks": mask})
    if not examples:
        raise ValueError(f"no SFT example fits sft.max_length={cfg.sft.max_length} with a token to learn")
    limit = cfg.rollout.max_turn_tokens
    stats = {
        "sft/examples": float(len(examples)),
        # Actions the rollout would cut at max_turn_tokens: the model learns to write what RL cannot sample.
        "sft/actions_over_turn_limit": float(
            sum(
                len(tokenizer.encode(t.action, add_special_tokens=False)) > limit
                for tr in trajectories
                for t in tr.turns
            )
        ),
        "sft/too_long": float(too_long),
        "sft/fix_share": sum(any(t.info.get("demo") == "mistake" for t in tr.turns) for tr in trajectories)
        / len(trajectories),
        "sft/mean_tokens": sum(len(e["input_ids"]) for e in examples) / len(examples),
        "sft/mean_loss_tokens": sum(sum(e["assistant_masks"]) for e in examples) / len(examples),
    }
    return examples, stats


def make_trainer(cfg: Config, model, tokenizer, examples: list[dict], work_dir: Path):
    """TRL's SFTTrainer over our tokenized examples: it turns `assistant_masks` into -100 labels."""
    from datasets import Dataset
    from transformers import Trainer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    class CPUSFTTrainer(SFTTrainer):
        """Off the GPU, the loss is the model's own cross-entropy over the full logits, the same mean over
        the assistant tokens. TRL's fused LM head runs in torch tiles there (its kernel is Triton), which
        is slower than the plain loss (docs/experiments.md); it only saves memory, and a model that
        trains on a CPU is small. TRL's entropy and token-accuracy logs, which come from the fused
        head, are left out."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    schedules = {"constant": "constant_with_warmup", "cosine": "cosine"}  # our names -> transformers'
    cuda = next(model.parameters()).is_cuda
    args = TRLConfig(
        output_dir=str(work_dir),
        max_steps=cfg.sft.steps,
        per_device_train_batch_size=cfg.sft.batch_size,
        learning_rate=cfg.sft.lr,
        lr_scheduler_type=schedules[cfg.sft.schedule],
        warmup_steps=cfg.sft.warmup_steps,
        max_grad_norm=cfg.learner.max_grad_norm,
        weight_decay=0.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=None,  # examples were already filtered by sft.max_length
        train_sampling_strategy="group_by_length",  # batches of similar lengths: little compute spent on padding
        bf16=cuda and cfg.learner.bf16,  # TRL turns bf16 on by default, which is ten times slower on a CPU
        use_cpu=not cuda,
        logging_steps=max(1, cfg.sft.steps // 20),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        # transformers 5.20 renamed gradient_checkpointing to activation_checkpointing (vLLM pins < 5.20);
        # TRL turns it on by default
        **{_checkpointing_field(TRLConfig): cfg.learner.gradient_checkpointing},
    )
    trainer_class = SFTTrainer if cuda else CPUSFTTrainer
    return trainer_class(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)


def _checkpointing_field(config_class) -> str:
    names = {f.name for f in fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


class ScoreStop(TrainerCallback):
    """A TRL callback: every `sft.check_every` steps, play `sft.check_tasks` of RL's train tasks
    greedily with the model being trained, and stop training once their mean score reaches `sft.stop_score`."""

    def __init__(self, cfg: Config, tokenizer):
        spec, params = cfg.env.resolve()
        self.make_env = lambda: spec.make_env(params)
        self.tasks = spec.load_tasks(params, "train")[: cfg.sft.check_tasks]
        self.cfg, self.tokenizer = cfg, tokenizer
        self.scores: list[tuple[int, float]] = []  # (step, mean score) of every check

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.cfg.sft.check_every:
            return control
        engine = HFEngine(model, self.tokenizer, next(model.parameters()).device)
        items = [Item(task, i, i) for i, task in enumerate(self.tasks)]
        formatter = TurnFormatter(self.tokenizer, self.cfg.rollout.observation_role)
        episodes = rollout(engine, formatter, self.make_env, items, self.cfg.rollout, greedy=True).episodes
        model.train()
        scores = [ep.trajectory.turns[-1].info.get("score", 0.0) if not ep.failed else 0.0 for ep in episodes]
        self.scores.append((state.global_step, sum(scores) / len(scores)))
        log.info(
            "sft step %d: greedy score on %d RL train tasks %.3f", state.global_step, len(scores), self.scores[-1][1]
        )
        # `or`: at step sft.steps the trainer's own callback has already asked to stop; do not undo that.
        control.should_training_stop = control.should_training_stop or self.scores[-1][1] >= self.cfg.sft.stop_score
        return control


def run_sft(
    cfg: Config, model, tokenizer, out: str | Path, trajectories: list[Trajectory], callbacks: tuple = ()
) -> dict[str, float]:
    """Fine-tune `model` on the trajectories; save it (and its tokenizer) to `out` and its statistics beside it.

    `callbacks`: more TRL trainer callbacks (the demo's, which changes the thread count mid-run).
    """
    t0 = time.perf_counter()
    examples, stats = sft_examples(cfg, tokenizer, trajectories)
    t1 = time.perf_counter()
    out = Path(out)
    trainer = make_trainer(cfg, model, tokenizer, examples, out.parent / "trl")
    stopper = ScoreStop(cfg, tokenizer) if cfg.sft.stop_score > 0 else None
    for callback in ([stopper] if stopper else []) + list(callbacks):
        trainer.add_callback(callback)
    result = trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    stats.update(
        {
            "sft/first_loss": losses[0] if losses else float("nan"),
            "sft/final_loss": losses[-1] if losses else float("nan"),
            "sft/train_loss": float(result.training_loss),
            "sft/steps_run": float(result.global_step),
            "time/sft_tokenize": t1 - t0,
            "time/sft_train": time.perf_counter() - t1,
        }
    )
    if stopper:
        stats["sft/check_score"] = stopper.scores[-1][1] if stopper.scores else float("nan")
        (out.parent / "sft_checks.json").write_text(json.dumps(stopper.scores))
    (out.parent / "sft_metrics.json").write_text(json.dumps(stats, indent=1))
    return stats
