"""Spine benchmark: how much our learner and HF engine cost over bare PyTorch / transformers.

Run from the repository root:

    python benchmarks/spine.py                      # tiny model, CPU-sized defaults (a few minutes on 2 cores)
    python benchmarks/spine.py --layers 24 --hidden 1024 --intermediate 4096 --heads 16 --kv-heads 4 \
        --vocab 32000 --batch 128 --micro 16        # bigger, for a GPU

Rows of the table (median seconds over --iters timed calls, after 2 warm-up calls each,
ours and baseline alternating; ratio = ours / baseline; PASS when ratio <= target):

  learner update mb=M  rl.learn.learner.Learner.update on --batch episodes with micro_batch_size M, against a
                       bare torch loop on a second copy of the same model: pre-padded micro-batches,
                       forward, gather - logsumexp logprobs, PPO clipped loss, token-mean, backward,
                       clip_grad_norm_, AdamW step, zero_grad. Target 1.15. The first row uses
                       M = --batch (one micro-batch), the second M = --micro (gradient accumulation).
  engine generate      rl.rollout.engine.HFEngine.generate on --prompts random prompts against model.generate
                       (do_sample, temperature 1, top_p 1, top_k 0) on the same left-padded batch and
                       the same model object. Target 1.1. generate never stops early (min_new_tokens);
                       our engine may stop a row at EOS, so the generated-token counts of both sides are
                       printed and the tok/s columns compare per-token cost as well.
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.base import Task, Trajectory
from rewards.base import Reward
from rl.batch import Batch
from rl.config import AlgoConfig, LearnerConfig, TinyModelConfig
from rl.episode import Episode
from rl.learn.learner import Learner
from rl.model import resolve_device
from rl.rollout.engine import HFEngine, Request, SamplingParams
from rl.run.tiny import build_tiny_model

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--device", default="auto")
p.add_argument("--layers", type=int, default=4)
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--intermediate", type=int, default=512)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--kv-heads", type=int, default=2)
p.add_argument("--vocab", type=int, default=1024)
p.add_argument("--batch", type=int, default=64, help="episodes per learner update")
p.add_argument("--min-len", type=int, default=48)
p.add_argument("--max-len", type=int, default=128)
p.add_argument("--micro", type=int, default=16, help="micro_batch_size of the accumulation row")
p.add_argument("--prompts", type=int, default=32)
p.add_argument("--prompt-len", type=int, default=32)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--iters", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
args = p.parse_args()
hf_logging.disable_progress_bar()
device = resolve_device(args.device)
autocast = device.type == "cuda"  # the learner's default: bf16 autocast on CUDA, float32 on CPU
rng = random.Random(0)
torch.manual_seed(0)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(ours, baseline):
    """Warm up each, then alternate timed calls; return (median ours, median baseline) in seconds."""
    for _ in range(args.warmup):
        ours(), baseline()
    t_ours, t_base = [], []
    for _ in range(args.iters):
        for fn, ts in ((ours, t_ours), (baseline, t_base)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_base)


# ---------------------------------------------------------------- a tiny Qwen2-style model on disk

syllables = ["ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "de", "ve", "gu", "zo", "fi", "ba", "xe", "qu", "ri", "mo"]
texts = [" ".join("".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(12)) + "." for _ in range(4000)]
model_dir = tempfile.mkdtemp(prefix="spine-")
cfg = TinyModelConfig(
    layers=args.layers,
    hidden=args.hidden,
    intermediate=args.intermediate,
    heads=args.heads,
    kv_heads=args.kv_heads,
    vocab_size=args.vocab,
    max_positions=max(2048, args.max_len, args.prompt_len + args.new_tokens),
)
build_tiny_model(model_dir, texts, cfg, seed=0)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
vocab = len(tokenizer)
n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
print(f"device {device}, threads {torch.get_num_threads()}, model {n_params / 1e6:.1f}M params, vocab {vocab}")

# ---------------------------------------------------------------- 1. learner update vs bare torch loop

episodes, advantages = [], []
for i in range(args.batch):
    n = rng.randint(args.min_len, args.max_len)
    n_policy = n // 2
    ep = Episode(trajectory=Trajectory(Task(id=str(i), prompt="")), group=i // 8, seed=i)
    ep.token_ids = [rng.randrange(vocab) for _ in range(n)]
    ep.loss_mask = [0] * (n - n_policy) + [1] * n_policy
    ep.logprobs = [0.0] * (n - n_policy) + [-rng.random() * 5 for _ in range(n_policy)]
    ep.reward = Reward(process=[], outcome=rng.gauss(0, 1))
    episodes.append(ep)
    advantages.append(torch.tensor(ep.loss_mask, dtype=torch.float32) * torch.randn(()))
updates = Batch.from_episodes(episodes)  # the learner computes its GRPO advantages from the rewards, as in a run
algo = AlgoConfig()  # PPO clip 0.2/0.2, token-mean, no KL
num_tokens = float(sum(sum(ep.loss_mask) for ep in episodes))


def padded_micro_batches(mb):
    """The bare loop's input: tensors built once, each micro-batch padded to its own longest row
    (as the learner does)."""
    out = []
    for s in range(0, args.batch, mb):
        eps, advs = episodes[s : s + mb], advantages[s : s + mb]
        T = max(len(e.token_ids) for e in eps)
        ids, att, mask, adv = (
            torch.zeros(len(eps), T, dtype=d) for d in (torch.long, torch.long, torch.float32, torch.float32)
        )
        for i, (e, a) in enumerate(zip(eps, advs)):
            n = len(e.token_ids)
            ids[i, :n], att[i, :n], mask[i, :n], adv[i, :n] = (
                torch.tensor(e.token_ids),
                1,
                torch.tensor(e.loss_mask, dtype=torch.float32),
                a,
            )
        out.append(tuple(t.to(device) for t in (ids, att, mask[:, 1:], adv[:, 1:])))
    return out


def bare_update(model, optimizer, micro_batches):
    for ids, att, mask, adv in micro_batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
        logits = logits[:, :-1].float()
        logp = logits.gather(-1, ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)
        ratio = torch.exp(logp - logp.detach())
        loss = -torch.min(ratio * adv, ratio.clamp(1 - algo.clip_low, 1 + algo.clip_high) * adv)
        ((loss * mask).sum() / num_tokens).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


rows = []
for mb in (args.batch, args.micro):
    lcfg = LearnerConfig(lr=1e-5, micro_batch_size=mb, device=str(device))
    learner = Learner(model_dir, lcfg, algo, temperature=1.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lcfg.lr, betas=(lcfg.adam_beta1, lcfg.adam_beta2), weight_decay=lcfg.weight_decay
    )
    micro_batches = padded_micro_batches(mb)
    # bound as defaults: the `del` below frees each size's model before the next one loads
    t_ours, t_base = bench(
        lambda learner=learner: learner.update(updates),
        lambda model=model, optimizer=optimizer: bare_update(model, optimizer, micro_batches),
    )
    rows.append((f"learner update mb={mb}", t_ours, t_base, 1.15, ""))
    del learner, model, optimizer

# ---------------------------------------------------------------- 2. HF engine vs model.generate

model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
engine = HFEngine(model, tokenizer, device)  # the same model object for both sides
eos = tokenizer.eos_token_id
prompts = [
    [rng.choice([t for t in range(vocab) if t != eos]) for _ in range(args.prompt_len)] for _ in range(args.prompts)
]
requests = [Request(prompt_ids=pr, max_new_tokens=args.new_tokens, seed=i) for i, pr in enumerate(prompts)]
params = SamplingParams(temperature=1.0)
input_ids = torch.tensor(prompts, device=device)  # equal lengths, so left-padding is a no-op
attention_mask = torch.ones_like(input_ids)
counts = {"ours": [], "base": []}


def ours_generate():
    gens = engine.generate(requests, params)
    counts["ours"].append(sum(len(g.token_ids) for g in gens))


@torch.no_grad()
def base_generate():
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=eos,
    )
    counts["base"].append((out.shape[1] - input_ids.shape[1]) * out.shape[0])


t_ours, t_base = bench(ours_generate, base_generate)
tok_ours, tok_base = statistics.median(counts["ours"]), statistics.median(counts["base"])
rows.append(
    (
        "engine generate",
        t_ours,
        t_base,
        1.1,
        f"tokens {tok_ours:.0f} vs {tok_base:.0f}, tok/s {tok_ours / t_ours:.0f} vs {tok_base / t_base:.0f}",
    )
)

# ---------------------------------------------------------------- table

print(f"\n{'benchmark':<22}{'ours (s)':>10}{'baseline (s)':>14}{'ratio':>8}{'target':>8}  {'result':<7}notes")
for name, a, b, target, note in rows:
    print(
        f"{name:<22}{a:>10.3f}{b:>14.3f}{a / b:>8.3f}{target:>8.2f}  {'PASS' if a / b <= target else 'FAIL':<7}{note}"
    )
