import pytest

from rl.config import load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner: {lr: 0.5}\nrollout: {group_size: 4}\nenv: {name: lookup, params: {num_keys: 3}}\n")
    cfg = load_config(path, ["learner.lr=1e-2", "rollout.temperature=0.7", "reward=[{name: outcome, weight: 2}]", "steps=7"])
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
