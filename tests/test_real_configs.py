"""The papers' configs (configs/reseek_qwen2.5-3b.yaml, configs/cocos_qwen2.5-1.5b.yaml,
configs/score_mbpp_qwen2.5-1.5b.yaml) load,
build and keep their settings.

Nothing is downloaded and nothing is trained: the model path is only checked to be one
that `load_model` would accept (a hub id or an existing directory). The settings taken
from the papers are asserted one by one, so a silent edit of a config is caught here.
"""

from functools import reduce
from pathlib import Path

import pytest

from envs.registry import get_env_spec
from rewards import build_reward
from rl.config import build_params, load_config, stage_config
from rl.model import looks_like_hub_id

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RESEEK, COCOS = CONFIGS / "reseek_qwen2.5-3b.yaml", CONFIGS / "cocos_qwen2.5-1.5b.yaml"
SCORE = CONFIGS / "score_mbpp_qwen2.5-1.5b.yaml"

# Dotted key -> the papers' value, as docs/search_agents.md and docs/self_correction.md give it; env.params.* are read
# from the env's built params dataclass.
PAPER_SETTINGS = {
    RESEEK: {
        "model.path": "Qwen/Qwen2.5-3B-Instruct",
        "env.name": "search",
        "env.params.prompt": "reseek_code",
        "env.params.system": "reseek",
        "env.params.retriever": "http://127.0.0.1:8000",
        "env.params.topk": 3,
        "env.params.max_searches": 4,
        "env.params.judge_mode": "soft",
        "env.params.score": "em",
        "sft.steps": 0,
        "rollout.tasks_per_step": 512,
        "rollout.group_size": 5,
        "rollout.max_turn_tokens": 500,
        "rollout.max_obs_tokens": 500,
        "rollout.temperature": 1.0,
        "algo.advantage": "grpo",
        "algo.kl_coef": 0.001,
        "algo.kl_estimator": "k3",
        "algo.kl_in_reward": False,
        "algo.clip_low": 0.2,
        "learner.lr": 1e-6,
        "learner.optim_steps_per_batch": 2,
        "learner.warmup_steps": 188,
        "workers.ray": True,
        "workers.engine": "vllm",
        "workers.gpus_per_worker": 1.0,
        "steps": 331,
    },
    COCOS: {
        "model.path": "Qwen/Qwen2.5-1.5B",
        "env.name": "code",
        "env.params.dataset": "mbpp",
        "env.params.max_turns": 2,
        "env.params.feedback": "none",
        "env.params.stop_when_correct": False,
        "env.params.timeout_s": 3.0,
        "sft.steps": 0,
        "rollout.tasks_per_step": 128,
        "rollout.group_size": 2,
        "rollout.max_turns": 2,
        "rollout.max_turn_tokens": 512,
        "rollout.temperature": 0.9,
        "algo.advantage": "rloo",
        "algo.kl_coef": 0.01,
        "algo.kl_estimator": "k1",
        "algo.kl_in_reward": True,
        "algo.clip_low": 0.2,
        "algo.loss_agg": "seq-mean-token-sum",
        "learner.lr": 1e-5,
        "learner.optim_steps_per_batch": 1,
        "learner.epochs": 1,
        "workers.ray": True,
        "workers.engine": "vllm",
        "workers.gpus_per_worker": 1.0,
        "steps": 1500,
    },
    SCORE: {
        "env.name": "code",
        "env.params.dataset": "mbpp",
        "env.params.max_turns": 2,
        "env.params.feedback": "none",
        "env.params.stop_when_correct": False,
        "sft.steps": 0,
        "rollout.temperature": 1.0,
        "algo.turn_gamma": 0.0,
        "algo.kl_coef": 0.01,
        "learner.lr": 1e-5,
        "steps": 1500,
    },
}
PAPER_REWARDS = {
    RESEEK: [
        ("search_answer", {}),
        (
            "search_judge",
            {
                "oracle": "substring",
                "pairing": "next",
                "yes_if_answer_right": True,
                "correct": 0.3,
                "wrong_yes": -0.6,
                "wrong_no": -0.3,
                "answer_bonus": 0.1,
                "aggregate_by": "sum",
                "require_answer": True,
            },
        ),
        ("search_format", {}),
    ],
    COCOS: [("cocos", {"gamma": 0.5})],
    SCORE: [("score_bonus", {"alpha": 10.0})],
}


def env_params(cfg):
    return build_params(get_env_spec(cfg.env.name).params, cfg.env.params, "env.params")


def setting(cfg, params, dotted: str):
    if dotted.startswith("env.params."):
        return getattr(params, dotted.removeprefix("env.params."))
    return reduce(getattr, dotted.split("."), cfg)


@pytest.mark.parametrize("path", [RESEEK, COCOS, SCORE], ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    params = env_params(cfg)  # every env.params key is a field of the env's params dataclass
    assert callable(build_reward(cfg.reward))
    model = cfg.model.path
    assert model and (
        looks_like_hub_id(model) or Path(model).is_dir()
    )  # what load_model accepts; nothing is downloaded
    assert cfg.rollout.max_turn_tokens < cfg.rollout.max_total_tokens
    limit = params.max_problems if cfg.env.name == "code" else params.max_tasks
    assert limit == 0  # the whole data set, as the papers train on


@pytest.mark.parametrize("path", [RESEEK, COCOS, SCORE], ids=lambda p: p.stem)
def test_paper_settings_are_kept(path):
    cfg = load_config(path)
    params = env_params(cfg)
    got = {key: setting(cfg, params, key) for key in PAPER_SETTINGS[path]}
    assert got == PAPER_SETTINGS[path]
    assert [(r.name, r.params) for r in cfg.reward] == PAPER_REWARDS[path]


def test_score_stages_are_the_papers():
    cfg = load_config(SCORE)
    one, two = (stage_config(cfg, k) for k in range(2))
    assert (one.algo.learn_from_turn, one.algo.kl_turns, one.algo.kl_coef) == (2, "first", 0.25)  # beta_2, MBPP
    assert [(r.name, r.params) for r in one.reward] == [("outcome", {"binary": True})]  # the second attempt's
    assert (two.algo.learn_from_turn, two.algo.kl_turns, two.algo.kl_coef) == (1, "all", 0.01)  # beta_1
    assert [(r.name, r.params) for r in two.reward] == [("score_bonus", {"alpha": 10.0})]
    assert sum(stage.steps for stage in cfg.stages) == cfg.steps == 1500


def test_reseek_turn_bound_covers_every_episode():
    cfg = load_config(RESEEK)
    # Each search may be followed by its judgment, then one answer: the env ends every episode within this many turns.
    assert cfg.rollout.max_turns >= 2 * env_params(cfg).max_searches + 1


def test_cocos_plays_mbpp_published_split():
    cfg = load_config(COCOS)
    spec, params = get_env_spec("code"), env_params(cfg)
    assert len(spec.load_tasks(params, "train")) == 374  # MBPP 601-974
    assert len(spec.load_tasks(params, "eval")) == 500  # MBPP 11-510


@pytest.mark.parametrize(
    "path, env_override, field, value",
    [
        (RESEEK, "env.params.topk=5", "topk", 5),
        (COCOS, "env.params.max_problems=3", "max_problems", 3),
    ],
    ids=["reseek", "cocos"],
)
def test_overrides_still_apply(path, env_override, field, value):
    cfg = load_config(
        path, ["rollout.tasks_per_step=16", "learner.lr=5e-7", "model.path=/models/local-copy", env_override]
    )
    assert cfg.rollout.tasks_per_step == 16 and cfg.learner.lr == 5e-7 and cfg.model.path == "/models/local-copy"
    assert getattr(env_params(cfg), field) == value
    assert cfg.rollout.group_size == PAPER_SETTINGS[path]["rollout.group_size"]  # the rest of the file is untouched


@pytest.mark.parametrize("path", [RESEEK, COCOS], ids=lambda p: p.stem)
@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.group_sise=4", "did you mean 'group_size'?"),
        ("algo.kl_coeff=0.1", "did you mean 'kl_coef'?"),
    ],
)
def test_misspelt_override_fails(path, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(path, [override])


@pytest.mark.parametrize(
    "path, misspelt", [(RESEEK, "env.params.topkk=5"), (COCOS, "env.params.max_turn=3")], ids=["reseek", "cocos"]
)
def test_misspelt_env_param_fails_at_load(path, misspelt):
    with pytest.raises(
        ValueError, match="unknown config key 'env.params"
    ):  # checked against the env's own params dataclass
        load_config(path, [misspelt])
