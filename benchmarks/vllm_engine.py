"""VLLMEngine against HFEngine: generation speed and weight-sync time, on the same requests and weights.

Run from the repository root (on a CPU-only machine `make test` installs vLLM's CPU build):

    python benchmarks/vllm_engine.py                 # every model size
    python benchmarks/vllm_engine.py --sizes tiny    # only the lookup config's tiny model

Tables:
  generation   tokens/s of one batch of 64 requests (prompts of 32 tokens, 32 new tokens each, sampled at
               temperature 1 with per-request seeds), median of the repeats after a warm-up, with torch
               (and vLLM's kernels) on 1 thread and on 2.
  weight sync  seconds to load a whole model into a running engine: 64 MB buckets, then finish_sync
               (vLLM on the CPU repacks every linear layer; HF copies in place), median of 3.

Model sizes: "tiny" has the shape of configs/lookup.yaml's model (2 layers, width 64); "10M" and "100M" are Qwen2-shaped
models of about that many parameters (head size 64). All are built on the spot (no downloads), in float32.
On a GPU both engines run there, vLLM in bfloat16.
"""

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.lookup import LookupParams, sample_text
from rl.config import TinyModelConfig
from rl.rollout.engine import HFEngine, Request, SamplingParams
from rl.run.tiny import build_tiny_model
from rl.weights import buckets

hf_logging.disable_progress_bar()
SIZES = {  # name: (layers, width, MLP width, heads, kv heads)
    "tiny": (2, 64, 128, 2, 1),
    "10M": (4, 384, 1536, 6, 2),
    "100M": (12, 768, 3072, 12, 4),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build(root: Path, name: str) -> Path:
    layers, width, mlp, heads, kv = SIZES[name]
    cfg = TinyModelConfig(layers=layers, hidden=width, intermediate=mlp, heads=heads, kv_heads=kv, vocab_size=512)
    return build_tiny_model(root / name, sample_text(LookupParams()) * 4, cfg, seed=0)


def requests(tokenizer) -> list[Request]:
    text = " ".join(sample_text(LookupParams()) * 8)
    ids = tokenizer(text)["input_ids"]
    return [Request(ids[32 * i : 32 * i + 32], 32, seed=i) for i in range(64)]


def tokens_per_second(engine, reqs: list[Request], repeats: int) -> float:
    params = SamplingParams(temperature=1.0)
    engine.generate(reqs, params)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        gens = engine.generate(reqs, params)
        rates.append(sum(len(g.token_ids) for g in gens) / (time.perf_counter() - start))
    return statistics.median(rates)


def sync_seconds(engine, weights: dict) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for part in buckets(weights, 64.0):
            engine.update_weights(part)
        engine.finish_sync(1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from rl.rollout.vllm_engine import VLLMEngine

    threads = [1, 2] if DEVICE == "cpu" else [torch.get_num_threads()]
    generation, sync = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            path = build(Path(tmp), name)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            n_params = sum(p.numel() for p in model.parameters())
            weights = {
                k: v.detach().clone() for k, v in model.named_parameters()
            }  # a learner's copy, not the engine's own tensors
            reqs = requests(tokenizer)
            engines = {
                "hf": HFEngine(model, tokenizer, DEVICE),
                "vllm": VLLMEngine(str(path), tokenizer, seed=0, max_model_len=128),
            }
            for n in threads:
                torch.set_num_threads(n)
                rates = {k: tokens_per_second(e, reqs, args.repeats) for k, e in engines.items()}
                generation.append((name, n_params, n, rates["hf"], rates["vllm"]))
                print(
                    f"generation {name} threads={n}: hf {rates['hf']:.0f} tok/s, vllm {rates['vllm']:.0f} tok/s",
                    flush=True,
                )
            torch.set_num_threads(threads[-1])
            seconds = {k: sync_seconds(e, weights) for k, e in engines.items()}
            sync.append((name, n_params, seconds["hf"], seconds["vllm"]))
            print(f"sync {name}: hf {seconds['hf']:.3f} s, vllm {seconds['vllm']:.3f} s", flush=True)
            del engines, model, weights
            gc.collect()

    print(f"\ngeneration: 64 requests x 32 new tokens, prompts of 32 tokens, {DEVICE}, median tokens/s")
    print("| model | parameters | threads | HFEngine | VLLMEngine | vLLM / HF |")
    print("|---|---|---|---|---|---|")
    for name, n_params, n, hf, vl in generation:
        print(f"| {name} | {n_params / 1e6:.1f}M | {n} | {hf:.0f} | {vl:.0f} | {vl / hf:.2f}x |")
    print(f"\nweight sync: whole model, 64 MB buckets + finish_sync, {DEVICE}, median seconds")
    print("| model | parameters | MB (fp32) | HFEngine | VLLMEngine | vLLM / HF |")
    print("|---|---|---|---|---|---|")
    for name, n_params, hf, vl in sync:
        print(f"| {name} | {n_params / 1e6:.1f}M | {n_params * 4 / 2**20:.0f} | {hf:.4f} | {vl:.4f} | {vl / hf:.1f}x |")


if __name__ == "__main__":
    main()
