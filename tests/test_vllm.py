"""VLLMEngine against an HF forward pass of the same tiny Qwen2 model. The GPU tests skip without vLLM or CUDA.

The engine runs in bf16 and the HF reference in fp32 with bf16-rounded weights, so the
two differ only by bf16 activations (about 5e-3 in logprob on this model). The logprobs of
two differently seeded models differ by about 0.4 on average.
"""

import gc
import importlib.util
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.lookup import LookupParams, sample_text
from rl.engine import Request, SamplingParams
from rl.tiny import TinyModelConfig, build_tiny_model
from rl.vllm_engine import _generation

MISSING = [what for what, ok in (("vLLM", importlib.util.find_spec("vllm") is not None), ("a CUDA GPU", torch.cuda.is_available())) if not ok]
needs_vllm_gpu = pytest.mark.skipif(bool(MISSING), reason="needs " + " and ".join(MISSING))

# head_dim 256 / 4 = 64, which vLLM's attention backends support; byte_alphabet=False keeps every token ASCII.
CFG = TinyModelConfig(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab_size=128, byte_alphabet=False)
TOL = 0.04  # max |engine - HF| logprob


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
    """HF references on the GPU, fp32 with the weights rounded to bf16 as the engine holds them."""
    return {name: load(getattr(models, name)).to(torch.bfloat16).float().cuda().eval() for name in ("a", "b")}


@pytest.fixture(scope="module")
def engine(models):
    from rl.vllm_engine import VLLMEngine

    eng = VLLMEngine(str(models.a), models.tok, enable_sleep_mode=True, seed=0, max_model_len=256, enforce_eager=True)
    yield eng
    del eng
    gc.collect()
    torch.cuda.empty_cache()


@torch.no_grad()
def hf_logprobs(model, prompt, completion, temperature=1.0):
    """Teacher-forced logprobs of `completion` after `prompt` under softmax(logits / temperature) (T=0: T=1)."""
    ids = torch.tensor([prompt + completion], device="cuda")
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logits = logits / temperature if temperature > 0 else logits
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion, device="cuda")[:, None])[:, 0].tolist()


def max_diff(xs, ys):
    flat = [abs(x - y) for a, b in zip(xs, ys, strict=True) for x, y in zip(a, b, strict=True)]
    return max(flat), sum(flat) / len(flat)


def probe(engine, model, prompts, n=8):
    """(engine, HF) logprobs of the last n tokens of each prompt."""
    got = engine.probe_logprobs(prompts, [len(p) - n for p in prompts])
    want = [hf_logprobs(model, p[:-n], p[-n:]) for p in prompts]
    return got, want


def test_finish_reason_mapping():
    """CPU-only: vLLM's (finish_reason, stop_reason) -> our finish reasons."""

    def out(finish, stop_reason):
        return SimpleNamespace(token_ids=[5, 6], logprobs=[{5: SimpleNamespace(logprob=-1.0)}, {6: SimpleNamespace(logprob=-2.0)}], finish_reason=finish, stop_reason=stop_reason)

    assert _generation(out("length", None)).finish_reason == "length"
    assert _generation(out("stop", "\n")).finish_reason == "stop"
    assert _generation(out("stop", None)).finish_reason == "eos"  # the tokenizer's EOS
    assert _generation(out("stop", 7)).finish_reason == "eos"  # another EOS id from generation_config
    assert _generation(out("stop", None)).logprobs == [-1.0, -2.0]
    with pytest.raises(RuntimeError):
        _generation(out("abort", None))


@needs_vllm_gpu
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_generate_matches_hf_forward(engine, models, hf, temperature):
    requests = [Request(p, 24, seed) for seed, p in enumerate(models.prompts)]
    gens = engine.generate(requests, SamplingParams(temperature=temperature))
    assert len(gens) == len(requests)
    for g, r in zip(gens, requests):
        assert len(g.token_ids) == len(g.logprobs) and 1 <= len(g.token_ids) <= r.max_new_tokens
        assert g.finish_reason in ("eos", "length")
    worst, mean = max_diff([g.logprobs for g in gens], [hf_logprobs(hf["a"], r.prompt_ids, g.token_ids, temperature) for r, g in zip(requests, gens)])
    assert worst < TOL and mean < TOL / 4, (worst, mean)


@needs_vllm_gpu
def test_top_p_logprobs_are_of_the_truncated_distribution(engine, models, hf):
    """The documented difference: with top_p < 1 vLLM reports logprobs of the renormalised nucleus (>= ours)."""
    requests = [Request(p, 16, seed) for seed, p in enumerate(models.prompts)]
    gens = engine.generate(requests, SamplingParams(temperature=1.0, top_p=0.5))
    diffs = [e - h for r, g in zip(requests, gens) for e, h in zip(g.logprobs, hf_logprobs(hf["a"], r.prompt_ids, g.token_ids))]
    assert min(diffs) > -TOL and sum(diffs) / len(diffs) > 0.3, (min(diffs), sum(diffs) / len(diffs))


@needs_vllm_gpu
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


@needs_vllm_gpu
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


@needs_vllm_gpu
def test_per_request_seeds_reproduce(engine, models):
    p = models.prompts
    params = SamplingParams(temperature=1.0)
    first = engine.generate([Request(p[0], 16, 7), Request(p[1], 16, 8)], params)
    again = engine.generate([Request(p[2], 16, 9), Request(p[0], 16, 7)], params)  # other neighbour, other slot
    other_seed = engine.generate([Request(p[0], 16, 10)], params)
    assert first[0].token_ids == again[1].token_ids
    assert first[0].token_ids != other_seed[0].token_ids


@needs_vllm_gpu
def test_probe_default_is_every_token_after_the_first(engine, models, hf):
    got = engine.probe_logprobs(models.prompts[:2])
    want = [hf_logprobs(hf["a"], p[:1], p[1:]) for p in models.prompts[:2]]
    assert [len(g) for g in got] == [len(p) - 1 for p in models.prompts[:2]]
    assert max_diff(got, want)[0] < TOL


@needs_vllm_gpu
def test_update_weights_switches_to_the_new_model(engine, models, hf):
    learner_b = load(models.b)  # fp32 on the CPU, as a learner might hold it
    requests = [Request(p, 16, seed) for seed, p in enumerate(models.prompts)]
    engine.generate(requests, SamplingParams())  # fill the prefix cache with model A's KV for these prompts
    try:
        for name, tensor in learner_b.named_parameters():  # one bucket per tensor: q_proj, k_proj and v_proj arrive apart
            engine.update_weights({name: tensor})
        gens = engine.generate(requests, SamplingParams())  # same prompts: stale A blocks would show here
        on_b = max_diff([g.logprobs for g in gens], [hf_logprobs(hf["b"], r.prompt_ids, g.token_ids) for r, g in zip(requests, gens)])
        on_a = max_diff([g.logprobs for g in gens], [hf_logprobs(hf["a"], r.prompt_ids, g.token_ids) for r, g in zip(requests, gens)])
        assert on_b[0] < TOL and on_a[1] > 0.1, (on_b, on_a)
        got, want = probe(engine, hf["b"], models.prompts)
        assert max_diff(got, want)[0] < TOL
    finally:
        engine.update_weights(dict(load(models.a).named_parameters()))
    got, want = probe(engine, hf["a"], models.prompts)
    assert max_diff(got, want)[0] < TOL


@needs_vllm_gpu
def test_sleep_wake_keeps_weights_synced(engine, models, hf):
    weights = {name: dict(load(getattr(models, name)).cuda().named_parameters()) for name in ("a", "b")}  # learner-style, on the GPU

    def synced_to(name):
        got, want = probe(engine, hf[name], models.prompts)
        return max_diff(got, want)[0] < TOL

    try:
        engine.sleep(level=1)
        with pytest.raises(RuntimeError, match="asleep"):
            engine.generate([Request(models.prompts[0], 4, 0)], SamplingParams())
        engine.update_weights(weights["b"])  # while asleep: must not be lost or overwritten by the CPU copy of A
        engine.wake_up()
        assert synced_to("b")

        engine.sleep(level=1)  # a plain offload/restore keeps B
        engine.wake_up()
        assert synced_to("b")

        engine.sleep(level=2)  # weights discarded
        for name, tensor in weights["a"].items():  # bucket by bucket: the first call wakes the weight memory
            engine.update_weights({name: tensor})
        engine.wake_up()
        assert synced_to("a")

        engine.sleep(level=2)
        engine.wake_up()  # woken without a sync: the weights are garbage, so the engine refuses to run
        with pytest.raises(RuntimeError, match="update_weights"):
            engine.probe_logprobs([models.prompts[0]], [30])
        engine.update_weights(weights["a"])
        assert synced_to("a")
        gens = engine.generate([Request(p, 8, s) for s, p in enumerate(models.prompts)], SamplingParams())
        assert all(len(g.token_ids) == len(g.logprobs) > 0 for g in gens)
    finally:
        engine.wake_up()
        engine.update_weights(weights["a"])
