"""VLLMEngine against an HF forward pass of the same tiny Qwen2 model, and in training, on a local Ray cluster.

On the CPU (vLLM's CPU build, what `make test` installs) the engine runs in float32, so
its logprobs match HF's to float32 rounding (about 5e-7 here). On a GPU it runs in bf16
and the HF reference is fp32 with bf16-rounded weights, so the two differ by bf16
activations (about 5e-3 on this model). The logprobs of two differently seeded models
differ by about 0.4 on average.
"""

import gc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.lookup import LookupParams, sample_text
from rl.config import TinyModelConfig
from rl.rollout.engine import HFEngine, Request, SamplingParams
from rl.rollout.vllm_engine import _generation
from rl.run.tiny import build_tiny_model
from rl.weights import buckets

ROOT = Path(__file__).resolve().parents[1]
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="needs vLLM (`make test` installs its CPU build on a machine without CUDA)"
)
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="sleep mode exists only on a GPU (vLLM has none on the CPU)"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 0.04 if DEVICE == "cuda" else 1e-4  # max |engine - HF| logprob

# head_dim 256 / 4 = 64, which vLLM's attention backends support; byte_alphabet=False keeps every token ASCII.
CFG = TinyModelConfig(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab_size=128, byte_alphabet=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models (same tokenizer, different seeds): the engine starts with A."""
    texts = sample_text(LookupParams()) + ["hello world, try again !"]
    root = tmp_path_factory.mktemp("vllm_tiny")
    a, b = (build_tiny_model(root / name, texts, CFG, seed) for name, seed in (("a", 0), ("b", 1)))
    tok = AutoTokenizer.from_pretrained(a)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(b).get_vocab()
    prompts = [tok(" ".join(texts[i : i + 5]))["input_ids"][:40] for i in range(0, 80, 5)]
    assert all(len(p) == 40 for p in prompts)  # 2 full KV blocks of 16, so the prefix cache holds them
    return SimpleNamespace(a=a, b=b, tok=tok, prompts=prompts)


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def hf(models):
    """HF references in fp32; on a GPU with the weights rounded to bf16 as the engine holds them."""
    if DEVICE == "cuda":
        return {name: load(getattr(models, name)).to(torch.bfloat16).float().cuda().eval() for name in ("a", "b")}
    return {name: load(getattr(models, name)).eval() for name in ("a", "b")}


@pytest.fixture(scope="module")
def engine(models):
    from rl.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(
        str(models.a), models.tok, enable_sleep_mode=DEVICE == "cuda", seed=0, max_model_len=256, enforce_eager=True
    )
    yield eng
    del eng
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def hf_logprobs(model, prompt, completion, temperature=1.0):
    """Teacher-forced logprobs of `completion` after `prompt` under softmax(logits / temperature) (T=0: T=1)."""
    ids = torch.tensor([prompt + completion], device=DEVICE)
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logits = logits / temperature if temperature > 0 else logits
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion, device=DEVICE)[:, None])[:, 0].tolist()


def max_diff(xs, ys):
    flat = [abs(x - y) for a, b in zip(xs, ys, strict=True) for x, y in zip(a, b, strict=True)]
    return max(flat), sum(flat) / len(flat)


def probe(engine, model, prompts, n=8):
    """(engine, HF) logprobs of the last n tokens of each prompt."""
    got = [logprobs[-n:] for logprobs in engine.probe_logprobs(prompts)]  # every token's after the first, cut to n
    want = [hf_logprobs(model, p[:-n], p[-n:]) for p in prompts]
    return got, want


def sync(engine, weights: dict, bucket_mb: float, version: int = 1) -> list[dict]:
    """A trainer's sync: the weights in buckets of `bucket_mb`, then finish_sync(version); returns the buckets."""
    parts = buckets(weights, bucket_mb)
    for part in parts:
        engine.update_weights(part)
    engine.finish_sync(version)
    return parts


def test_finish_reason_mapping():
    """vLLM's (finish_reason, stop_reason) -> our finish reasons (plain data, no engine)."""

    def out(finish, stop_reason):
        return SimpleNamespace(
            token_ids=[5, 6],
            logprobs=[{5: SimpleNamespace(logprob=-1.0)}, {6: SimpleNamespace(logprob=-2.0)}],
            finish_reason=finish,
            stop_reason=stop_reason,
            weight_versions=[SimpleNamespace(version="3", start=0, end=2)],
        )

    assert _generation(out("length", None)).finish_reason == "length"
    assert _generation(out("stop", "\n")).finish_reason == "stop"
    assert _generation(out("stop", None)).finish_reason == "eos"  # the tokenizer's EOS
    assert _generation(out("stop", 7)).finish_reason == "eos"  # another EOS id from generation_config
    assert _generation(out("stop", None)).logprobs == [-1.0, -2.0]
    assert _generation(out("stop", None)).versions == [3, 3]
    with pytest.raises(RuntimeError):
        _generation(out("abort", None))


@needs_vllm
def test_engine_says_what_it_is(engine):
    import vllm

    assert engine.describe() == f"vllm {vllm.__version__} {DEVICE} {'bfloat16' if DEVICE == 'cuda' else 'float32'}"
    assert torch.get_num_threads() >= 1
    torch.set_num_threads(1)  # vLLM's CPU worker turns this into a no-op for the process; the engine gives it back
    assert torch.get_num_threads() == 1
    torch.set_num_threads(os.cpu_count())
    assert torch.get_num_threads() == os.cpu_count()


@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_generate_matches_hf_forward(engine, models, hf, temperature):
    requests = [Request(p, 24, seed) for seed, p in enumerate(models.prompts)]
    gens = engine.generate(requests, SamplingParams(temperature=temperature))
    assert len(gens) == len(requests)
    for g, r in zip(gens, requests):
        assert len(g.token_ids) == len(g.logprobs) and 1 <= len(g.token_ids) <= r.max_new_tokens
        assert g.finish_reason in ("eos", "length")
    worst, mean = max_diff(
        [g.logprobs for g in gens],
        [hf_logprobs(hf["a"], r.prompt_ids, g.token_ids, temperature) for r, g in zip(requests, gens)],
    )
    assert worst < TOL and mean < TOL / 4, (worst, mean)


@needs_vllm
def test_greedy_generation_equals_hf_engine(engine, models, hf):
    """Same requests, greedy, with a stop string: the same tokens, finish reasons and logprobs as HFEngine."""
    if DEVICE == "cuda":
        pytest.skip("bf16 engine against an fp32 HFEngine: greedy choices may differ on near-ties")
    hf_engine = HFEngine(hf["a"], models.tok)
    probe_gen = hf_engine.generate([Request(models.prompts[0], 32, 0)], SamplingParams(temperature=0.0))[0]
    stop = models.tok.decode(probe_gen.token_ids[5:6]).strip() or "a"  # a string greedy decoding meets on some prompts
    requests = [Request(p, 32, seed) for seed, p in enumerate(models.prompts)]
    params = SamplingParams(temperature=0.0, stop=[stop])
    ours, theirs = engine.generate(requests, params), hf_engine.generate(requests, params)
    assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
    assert [g.finish_reason for g in ours] == [g.finish_reason for g in theirs]
    assert "stop" in {g.finish_reason for g in ours}
    assert max_diff([g.logprobs for g in ours], [g.logprobs for g in theirs])[0] < TOL


@needs_vllm
def test_top_p_logprobs_are_of_the_truncated_distribution(engine, models, hf):
    """The documented difference: with top_p < 1 vLLM reports logprobs of the renormalised nucleus (>= ours)."""
    requests = [Request(p, 16, seed) for seed, p in enumerate(models.prompts)]
    gens = engine.generate(requests, SamplingParams(temperature=1.0, top_p=0.5))
    diffs = [
        e - h
        for r, g in zip(requests, gens)
        for e, h in zip(g.logprobs, hf_logprobs(hf["a"], r.prompt_ids, g.token_ids))
    ]
    assert min(diffs) > -TOL and sum(diffs) / len(diffs) > 0.3, (min(diffs), sum(diffs) / len(diffs))


@needs_vllm
def test_more_seeded_prompt_tokens_than_one_step_holds(engine, models):
    # 40 prompts of 200 tokens: more than the 4,096 tokens a step prefills. Each still samples from its own seed.
    prompts = [(models.prompts[i % len(models.prompts)] * 50)[:200] for i in range(40)]
    gens = engine.generate([Request(p, 4, seed=i) for i, p in enumerate(prompts)], SamplingParams(temperature=1.0))
    assert [len(g.token_ids) for g in gens if g.finish_reason == "length"] and all(g.token_ids for g in gens)
    again = engine.generate([Request(prompts[7], 4, seed=7)], SamplingParams(temperature=1.0))[0]
    assert again.token_ids == gens[7].token_ids


@needs_vllm
def test_finish_reasons_match_the_tokens(engine, models):
    eos = models.tok.eos_token_id
    requests = [Request(models.prompts[i % len(models.prompts)], 64, 100 + i) for i in range(32)]
    gens = engine.generate(requests, SamplingParams(temperature=1.0))
    for g, r in zip(gens, requests):
        assert eos not in g.token_ids[:-1]
        if g.finish_reason == "eos":
            assert g.token_ids[-1] == eos
        else:
            assert g.finish_reason == "length" and len(g.token_ids) == r.max_new_tokens and g.token_ids[-1] != eos
    assert any(g.finish_reason == "eos" for g in gens)  # ~1/128 per step over 2048 steps


@needs_vllm
def test_stop_string_ends_generation_and_keeps_its_tokens(engine, models):
    tok, prompt = models.tok, models.prompts[3]
    ref = engine.generate([Request(prompt, 48, 11)], SamplingParams(temperature=1.0))[0]
    ids = ref.token_ids[:-1] if ref.finish_reason == "eos" else ref.token_ids
    k = next(k for k in range(2, len(ids)) if tok.decode([ids[k]]).strip())
    stop = tok.decode([ids[k]]).strip()
    n = next(n for n in range(1, len(ids) + 1) if stop in tok.decode(ids[:n]))  # first token completing the stop string
    got = engine.generate([Request(prompt, 48, 11)], SamplingParams(temperature=1.0, stop=[stop]))[0]
    assert got.finish_reason == "stop"
    assert got.token_ids == ids[:n]  # same seed, same samples, cut right after the stop string's last token
    assert stop in tok.decode(got.token_ids) and stop not in tok.decode(got.token_ids[:-1])
    assert len(got.logprobs) == n


@needs_vllm
def test_per_request_seeds_reproduce(engine, models):
    p = models.prompts
    params = SamplingParams(temperature=1.0)
    first = engine.generate([Request(p[0], 16, 7), Request(p[1], 16, 8)], params)
    again = engine.generate([Request(p[2], 16, 9), Request(p[0], 16, 7)], params)  # other neighbour, other slot
    other_seed = engine.generate([Request(p[0], 16, 10)], params)
    assert first[0].token_ids == again[1].token_ids
    assert first[0].token_ids != other_seed[0].token_ids


@needs_vllm
def test_probe_default_is_every_token_after_the_first(engine, models, hf):
    got = engine.probe_logprobs(models.prompts[:2])
    want = [hf_logprobs(hf["a"], p[:1], p[1:]) for p in models.prompts[:2]]
    assert [len(g) for g in got] == [len(p) - 1 for p in models.prompts[:2]]
    assert max_diff(got, want)[0] < TOL


@needs_vllm
@pytest.mark.parametrize(
    "bucket_mb", [0.01, 1.0]
)  # 0.01 MB: a bucket per tensor, q/k/v and gate/up apart; 1 MB: whole layers
def test_sync_switches_to_the_new_model(engine, models, hf, bucket_mb):
    learner_b = load(models.b).to(DEVICE)  # fp32, as a learner holds it
    requests = [Request(p, 16, seed) for seed, p in enumerate(models.prompts)]
    engine.generate(requests, SamplingParams())  # fill the prefix cache with model A's KV for these prompts
    try:
        parts = sync(engine, dict(learner_b.named_parameters()), bucket_mb)
        bucket_of = {name: i for i, part in enumerate(parts) for name in part}
        split = (
            bucket_of["model.layers.0.self_attn.q_proj.weight"] != bucket_of["model.layers.0.self_attn.k_proj.weight"]
        )
        assert split == (bucket_mb < 0.1)  # small buckets split the fused qkv layer; large ones hold whole layers
        gens = engine.generate(requests, SamplingParams())  # same prompts: stale A blocks would show here
        on_b = max_diff(
            [g.logprobs for g in gens],
            [hf_logprobs(hf["b"], r.prompt_ids, g.token_ids) for r, g in zip(requests, gens)],
        )
        on_a = max_diff(
            [g.logprobs for g in gens],
            [hf_logprobs(hf["a"], r.prompt_ids, g.token_ids) for r, g in zip(requests, gens)],
        )
        assert on_b[0] < TOL and on_a[1] > 0.1, (on_b, on_a)
        got, want = probe(engine, hf["b"], models.prompts)
        assert max_diff(got, want)[0] < TOL
    finally:
        sync(engine, dict(load(models.a).named_parameters()), 64.0)
    got, want = probe(engine, hf["a"], models.prompts)
    assert max_diff(got, want)[0] < TOL


@needs_vllm
def test_a_sync_reaches_a_generation_in_flight(engine, models, hf):
    """Partial rollouts: a request sampled in part by A goes on with B after a sync; each token records the version
    that sampled it and its logprob under that version's weights (vLLM prefills the request again with B)."""
    try:
        sync(engine, dict(load(models.a).named_parameters()), 64.0, version=4)
        prompt = models.prompts[3]
        engine.add("k", Request(prompt, 16, seed=11), SamplingParams(temperature=1.0))
        for _ in range(5):
            assert engine.step() == []
        sync(engine, dict(load(models.b).named_parameters()), 64.0, version=5)
        done = []
        while not done:
            done = engine.step()
        [(key, gen)] = done
        first = gen.versions.count(4)
        assert key == "k" and gen.versions == [4] * first + [5] * (16 - first) and 0 < first < 16
        under_a = hf_logprobs(hf["a"], prompt, gen.token_ids)
        under_b = hf_logprobs(hf["b"], prompt, gen.token_ids)
        assert max_diff([gen.logprobs[:first]], [under_a[:first]])[0] < TOL
        assert max_diff([gen.logprobs[first:]], [under_b[first:]])[0] < TOL
        assert max_diff(*probe(engine, hf["b"], models.prompts[:4]))[0] < TOL  # the probe check after the sync
    finally:
        sync(engine, dict(load(models.a).named_parameters()), 64.0, version=0)


@needs_vllm
def test_the_tied_head_follows_the_embedding(engine, models, hf):
    """The LM head is the embedding's tensor: a sync of the embedding alone must change the logits too."""
    b = dict(load(models.b).named_parameters())
    assert "lm_head.weight" not in b  # tied: HF names it once, as the embedding
    reference = load(models.a)
    reference.model.embed_tokens.weight.data.copy_(b["model.embed_tokens.weight"])  # and, tied, the head
    try:
        sync(engine, {"model.embed_tokens.weight": b["model.embed_tokens.weight"]}, 64.0)
        got, want = probe(engine, reference.to(DEVICE).eval(), models.prompts)
        assert max_diff(got, want)[0] < TOL
    finally:
        sync(engine, dict(load(models.a).named_parameters()), 64.0)


@needs_vllm
def test_a_sync_that_splits_a_layer_and_never_completes_it_is_refused(engine, models, hf):
    if DEVICE == "cuda":
        pytest.skip("on CUDA each tensor is written in place as it comes: a partial layer is the caller's choice")
    b = dict(load(models.b).named_parameters())
    engine.update_weights({"model.layers.0.self_attn.q_proj.weight": b["model.layers.0.self_attn.q_proj.weight"]})
    with pytest.raises(RuntimeError, match="finish_sync"):  # mid-sync the engine refuses to run
        engine.generate([Request(models.prompts[0], 4, 0)], SamplingParams())
    with pytest.raises(RuntimeError, match=r"only part of their tensors.*qkv_proj"):
        engine.finish_sync(1)  # k_proj and v_proj never came
    with pytest.raises(RuntimeError, match="update_weights"):  # the weights are not whole: no generation on them
        engine.probe_logprobs([models.prompts[0]])
    sync(engine, dict(load(models.a).named_parameters()), 64.0)
    got, want = probe(engine, hf["a"], models.prompts)
    assert max_diff(got, want)[0] < TOL


@needs_vllm
@needs_gpu
def test_sleep_wake_keeps_weights_synced(engine, models, hf):
    weights = {
        name: dict(load(getattr(models, name)).cuda().named_parameters()) for name in ("a", "b")
    }  # learner-style, on the GPU

    def synced_to(name):
        got, want = probe(engine, hf[name], models.prompts)
        return max_diff(got, want)[0] < TOL

    try:
        engine.sleep()
        with pytest.raises(RuntimeError, match="asleep"):
            engine.generate([Request(models.prompts[0], 4, 0)], SamplingParams())
        sync(engine, weights["b"], 64.0)  # while asleep: must not be lost or overwritten by the CPU copy of A
        engine.wake_up()
        assert synced_to("b")

        engine.sleep()  # a plain offload/restore keeps B
        engine.wake_up()
        assert synced_to("b")

        engine.sleep()
        sync(engine, weights["a"], 0.01)  # bucket by bucket: the first call wakes the weight memory
        engine.wake_up()
        assert synced_to("a")
        gens = engine.generate([Request(p, 8, s) for s, p in enumerate(models.prompts)], SamplingParams())
        assert all(len(g.token_ids) == len(g.logprobs) > 0 for g in gens)
    finally:
        engine.wake_up()
        sync(engine, weights["a"], 64.0)


def train(run_dir: Path, *overrides: str, python_prelude: str = "pass") -> subprocess.CompletedProcess:
    """`python -m rl train configs/lookup.yaml` for 3 steps, as a user runs it, in its own process."""
    args = [
        "configs/lookup.yaml",
        "steps=3",
        f"run_dir={run_dir}",
        "save_every=0",
        "eval_every=0",
        "workers.engine=vllm",
        *overrides,
    ]
    code = f"import sys; {python_prelude}; from rl.cli import main; sys.exit(main(['train', *{args!r}]))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)


def episodes(run_dir: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "episodes" / f"step_{step:06d}.jsonl").read_text().splitlines()]


@needs_vllm
def test_training_with_vllm_on_ray_equals_in_process_vllm(tmp_path):
    """3 GRPO steps with vLLM rollout workers on a local Ray cluster and with vLLM in the trainer's process:
    every sync checked at fp32 tolerance, the same episodes, the engine named in every metrics line."""
    runs = {"ray": tmp_path / "ray", "local": tmp_path / "local"}
    for mode, run_dir in runs.items():
        extra = ["workers.ray=true", "workers.num_workers=1"] if mode == "ray" else []
        proc = train(run_dir, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for mode, run_dir in runs.items():
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in lines if "reward/mean" in m]
        assert [m["step"] for m in steps] == [1, 2, 3]
        assert all(m["sync/probe_max_abs"] < 1e-4 for m in steps), [m["sync/probe_max_abs"] for m in steps]
        assert (
            all(m["engine"].startswith("vllm ") and m["engine"].endswith(" cpu float32") for m in lines)
            or DEVICE == "cuda"
        )
        assert steps[0]["learner/mismatch_max_abs"] < 1e-4  # the engine sampled with the learner's logprobs
    for step in (1, 2, 3):
        local, remote = episodes(runs["local"], step), episodes(runs["ray"], step)
        assert [e["token_ids"] for e in local] == [e["token_ids"] for e in remote]
        assert [e["reward"] for e in local] == [e["reward"] for e in remote]
        for a, b in zip(local, remote):
            assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)


@needs_vllm
def test_fully_asynchronous_training_with_vllm_workers(tmp_path):
    """K=2 with partial rollouts on a vLLM Ray worker, weights by broadcast (loaded through vLLM's collective
    RPC): every sync checked at fp32 tolerance with generations in flight, every token's version logged, no
    trained episode more than 2 versions behind its update."""
    proc = train(
        tmp_path,
        "steps=5",
        "workers.ray=true",
        "workers.num_workers=1",
        "workers.weight_transport=broadcast",
        "workers.max_staleness=2",
        "workers.partial_rollouts=true",
        "rollout.schedule=overlap",
        "algo.tis_cap=2.0",
        "algo.tis_mode=mask",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5]
    # each sync's check runs before the next sync (or the final evaluation): steps 2..5 and the evaluation's line
    checks = [m["sync/probe_max_abs"] for m in lines if "sync/probe_max_abs" in m]
    assert len(checks) == 5 and all(c < 1e-4 for c in checks)
    for step in range(1, 6):
        for ep in episodes(tmp_path, step):
            sampled = [v for v, m in zip(ep["versions"], ep["loss_mask"]) if m]
            assert sampled and all(v >= 0 for v in sampled) and step - 1 - min(sampled) <= 2
    assert max(m["staleness/max"] for m in steps) <= 2


def test_vllm_engine_without_vllm_fails_at_once_and_says_how_to_install(tmp_path):
    proc = train(tmp_path / "run", python_prelude="sys.modules['vllm'] = None")  # as on a machine without vLLM
    assert proc.returncode != 0
    assert "workers.engine=vllm needs vLLM" in proc.stderr and "pip install" in proc.stderr
    assert not (tmp_path / "run" / "base_model").exists()  # failed before building any model
