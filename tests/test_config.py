import pytest

from rl.config import load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner: {lr: 0.5}\nrollout: {group_size: 4}\nenv: {name: lookup, params: {num_keys: 3}}\n")
    cfg = load_config(
        path, ["learner.lr=1e-2", "rollout.temperature=0.7", "reward=[{name: outcome, weight: 2}]", "steps=7"]
    )
    assert cfg.learner.lr == 0.01  # "1e-2" is a string to PyYAML; the typed config reads it as a float
    assert cfg.rollout.group_size == 4 and cfg.rollout.temperature == 0.7
    assert cfg.env.params == {"num_keys": 3}
    assert cfg.reward[0].name == "outcome" and cfg.reward[0].weight == 2.0
    assert cfg.steps == 7 and cfg.learner.micro_batch_size == 8  # untouched keys keep their defaults


@pytest.mark.parametrize(
    "override, message",
    [
        ("learner.lrr=1", "unknown config key 'learner.lrr'; did you mean 'lr'?"),
        ("rollout.group_sise=2", "did you mean 'group_size'?"),
        ("stpes=3", "did you mean 'steps'?"),
        ("steps=many", "steps: expected int"),
        ("reward=[{name: outcome, wieght: 1}]", "did you mean 'weight'?"),
        ("learner=3", "learner: expected a mapping"),
        ("steps", "not of the form key=value"),
        ("workers.max_staleness=-1", "workers.max_staleness=-1: a number of updates"),
        ("workers.partial_rollouts=true", "workers.partial_rollouts needs workers.ray=true"),
        ("workers.weight_transport=broadcast", "workers.weight_transport=broadcast needs workers.ray=true"),
        ("workers.weight_transport=nccl", "workers.weight_transport"),
        ("workers.placement=pack", "workers.placement"),
        ("learner.connect_timeout_s=0", "learner.connect_timeout_s=0: a number of seconds, above 0"),
        ("algo.turn_gamma=1.5", "algo.turn_gamma=1.5: a discount between 0 and 1"),
        ("stages=[{steps: 2}, {steps: 3}]", "steps=100: with stages, steps is the sum of the stages' steps (5)"),
        ("stages=[{steps: 0}]", "stages: steps=0: each stage runs 1 step or more"),
        ("stages=[{steps: 100, overrides: [learner.lr=1]}]", "stages: overrides 'learner.lr=1': a stage changes only"),
        ("stages=[{steps: 100, overrides: [algo.kl_cof=0.1]}]", "stages[0]: unknown config key 'algo.kl_cof'"),
        ("stages=[{steps: 100, overrides: ['reward=[{name: outcom}]']}]", "stages[0].reward[0]: unknown reward"),
        (
            "stages=[{steps: 50, overrides: [algo.kl_coef=0.1]}, {steps: 50}]",
            "stages[1]: algo.kl_coef > 0 in some stages and not others",
        ),
        ("stages=[{steps: 50}, {steps: 50, overrides: [algo.advantage=rloo]}]", "stages[1]: algo.advantage is the"),
        ("workers={ray: true, partial_rollouts: true}", "partial_rollouts needs workers.max_staleness > 0"),
        (
            "workers={ray: true, partial_rollouts: true, max_staleness: 2}",
            "needs rollout.schedule=overlap (it is 'reproducible')",
        ),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("no/such/file.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    for path in Path(__file__).resolve().parents[1].glob("configs/*.yaml"):
        load_config(path)


def named_options():
    """(dotted key, valid values) of every Literal option of the config."""
    import dataclasses
    import typing

    from rl.config import Config, choices

    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif typing.get_origin(hints[f.name]) is typing.Literal:
                out.append((prefix + f.name, choices(hints[f.name], f.name)))

    walk(Config, "")
    return out


def test_every_named_option_is_typed():
    keys = {key for key, _ in named_options()}
    assert {
        "algo.advantage",
        "algo.policy_loss",
        "algo.loss_agg",
        "algo.kl_estimator",
        "algo.tis_level",
        "algo.critic",
        "workers.engine",
        "sft.schedule",
        "rollout.observation_role",
    } <= keys


@pytest.mark.parametrize("key, valid", named_options())
def test_an_unknown_named_option_fails_at_load_with_the_closest_value(key, valid):
    typo = valid[-1] + "x"  # one letter off the last valid value
    with pytest.raises(ValueError) as err:
        load_config(None, [f"{key}={typo}"])
    assert f"{key}: unknown {key.split('.')[-1]} {typo!r}; did you mean {valid[-1]!r}?" in str(err.value)
    value = load_config(None, [f"{key}={valid[0]}"])
    for name in key.split("."):
        value = getattr(value, name)
    assert value == valid[0]


def test_a_bad_option_stops_the_cli_before_any_model_or_data_is_built(tmp_path, capsys):
    from rl.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "configs/lookup.yaml", "algo.advantage=grpoo", f"run_dir={run_dir}"]) == 2
    assert "did you mean 'grpo'?" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("env.name=serch", "env.name: unknown env 'serch'; did you mean 'search'?"),
        ("reward=[{name: outcom}]", "reward[0]: unknown reward 'outcom' (did you mean 'outcome'?)"),
        ("imports=[no_such_module_here]", "imports: cannot import 'no_such_module_here'"),
    ],
)
def test_env_reward_and_import_names_are_checked_at_load(override, message):
    with pytest.raises(ValueError) as err:
        load_config("configs/lookup.yaml", [override])
    assert message in str(err.value)


def test_a_registered_name_becomes_a_valid_option(tmp_path, monkeypatch):
    """A module named in `imports` registers a name; the config then accepts it (and only then)."""
    (tmp_path / "my_names.py").write_text("from rl.config import allow\nallow('advantage', 'grpo_mine')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="unknown advantage 'grpo_mine'"):
        load_config(None, ["algo.advantage=grpo_mine"])
    assert load_config(None, ["imports=[my_names]", "algo.advantage=grpo_mine"]).algo.advantage == "grpo_mine"
