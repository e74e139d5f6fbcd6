"""The README's example of a registered estimator and policy loss runs as written, through the CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_registered_estimator_and_loss_of_the_readme_train(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Adding an estimator or a policy loss") :]
    code = re.search(r"```python\n(# mypkg/algorithms.py\n.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(python -m rl train .*?)\n```", section, re.S).group(1)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "algorithms.py").write_text(code)
    args = command.split()[3:] + ["steps=2", "seed=2", "save_every=0", f"run_dir={tmp_path / 'run'}"]
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "rl", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/pg_adv" in r]
    assert len(trained) == 2  # the loss of the README ran: its metric is in every step's line
    assert all("learner/clip_frac" not in r for r in trained)  # and PPO's did not
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "advantage: reinforce" in config and "policy_loss: pg" in config
