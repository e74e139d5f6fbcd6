"""PNG plots of a run, read back from its metrics.jsonl: the training reward and the evaluations.

    python -m rl.view.plots runs/search          # writes runs/search/reward.png and eval.png, prints their paths

reward.png: `reward/mean` (bold, with a +-`reward/std` band) and each named reward's
contribution `reward/<name>` against the step, each as a faint raw line under a
trailing moving average. eval.png: the main evaluation metrics against the step (the reward
and the first of the headline metrics, `EnvSpec.headline`, of the env named in the run's
config.yaml), with `eval/searches_per_episode` on a second y-axis (a count, not a rate in
[0, 1]); where the env reports `eval/acc_by_turn/k` (code), a second panel holds the
per-turn accuracy curve of each evaluation, light to dark as training goes on: a curve that
rises with the turn is a model that corrects itself.

It only reads the file, so it works during a run as well as after one. Evaluation lines
may share a step's line or come as a line of their own with the same step; every line is
read and NaN points are skipped. A figure without data is not written (no eval.png before
the first evaluation). Figures are built with matplotlib's object API on the Agg canvas:
nothing needs a display, and no figure is registered with pyplot, so calling `plot_run`
at every checkpoint leaves nothing behind.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache, partial
from pathlib import Path

import matplotlib
import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from envs.jsonl import numbered_jsonl
from envs.registry import BUILTIN, get_env_spec

FIGSIZE, DPI = (8.0, 4.5), 100  # 800 x 450 pixels: readable at a glance, small on disk
EVAL_REWARD = "eval/reward/mean"  # drawn first, for every env
EVAL_SCORES = ("eval/score/first_turn", "eval/score/last_turn")  # drawn when no headline metric of the env is there
PLOTTED = 3  # the env's first headline metrics (EnvSpec.headline) drawn: more curves on one axis are hard to tell apart
EVAL_SECOND_AXIS = "eval/searches_per_episode"  # a count, not a rate in [0, 1]: on an axis of its own
BY_TURN = "eval/acc_by_turn/"  # + k: accuracy at turn k


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of a metrics file, in order; an error that names the file when there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {str(path)!r}")
    records = []
    for n, record in numbered_jsonl(path):  # the trainer writes NaN as the bare token NaN, which json reads
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: not a JSON object")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no metrics lines")
    return records


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in step order, NaN and missing points left out; a later line wins for a step."""
    by_step = {}
    for r in records:
        value = r.get(key)
        step = r.get("step")
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and isinstance(step, int)
        ):
            by_step[step] = float(value)
    steps = sorted(by_step)
    return np.array(steps, dtype=float), np.array([by_step[s] for s in steps], dtype=float)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the `window - 1` before it (fewer at the start, so the curve starts where the data
    does)."""
    csum = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (csum[end] - csum[start]) / (end - start)


def smoothing_window(n: int) -> int:
    return max(1, n // 20)  # about 5% of the run: removes step-to-step noise, keeps the trend's shape


def reward_keys(keys) -> list[str]:
    """The named rewards' contributions: `reward/<name>` with exactly one slash, not mean or std."""
    return sorted(
        k for k in keys if k.startswith("reward/") and k.count("/") == 1 and k not in ("reward/mean", "reward/std")
    )


def headline_keys(headline) -> list[str]:
    """The eval/ keys of the first PLOTTED metrics of an env's headline, beside the reward and the second axis."""
    return [k for k in (f"eval/{m}" for m in headline) if k not in (EVAL_REWARD, EVAL_SECOND_AXIS)][:PLOTTED]


@lru_cache(maxsize=1)
def builtin_headline_keys() -> tuple[str, ...]:
    """headline_keys of every built-in env: what a metrics file of an unknown env may hold."""
    return tuple(dict.fromkeys(k for name in BUILTIN for k in headline_keys(get_env_spec(name).headline)))


def run_headline(run_dir: Path) -> tuple[str, ...] | None:
    """The headline of the run's env (env.name in its config.yaml); None when that cannot be read."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        return tuple(get_env_spec(config["env"]["name"]).headline)
    except Exception:  # no config, not YAML, no env name, an env module that does not import here
        return None


def eval_keys(keys, headline: tuple[str, ...] | None = None) -> list[str]:
    """The main evaluation metrics present: the reward, the first PLOTTED of the env's `headline` metrics (of any
    built-in env's when `headline` is None: the env is not known), and the scores when none of those is there."""
    keys = set(keys)
    task = [k for k in (builtin_headline_keys() if headline is None else headline_keys(headline)) if k in keys]
    return [k for k in [EVAL_REWARD, *task, *(() if task else EVAL_SCORES)] if k in keys]


def _new_figure(title: str, panels: int = 1) -> tuple[Figure, object]:
    """A figure FIGSIZE wide per panel; the first panel's axes (against the step) are returned, the others are
    fig.axes[1:]."""
    fig = Figure(figsize=(FIGSIZE[0] * panels, FIGSIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    return fig, ax


def by_turn_curves(records: list[dict]) -> list[tuple[int, list[float]]]:
    """(step, [accuracy at turn 1, 2, ...]) of each evaluation that reports `eval/acc_by_turn/k`, in step order."""
    turns = sorted({int(k.removeprefix(BY_TURN)) for r in records for k in r if k.startswith(BY_TURN)})
    by_step = {}
    for k in turns:
        for step, value in zip(*series(records, f"{BY_TURN}{k}")):
            by_step.setdefault(int(step), {})[k] = value
    return [(step, [acc[k] for k in sorted(acc)]) for step, acc in sorted(by_step.items())]


def _by_turn_panel(ax, curves: list[tuple[int, list[float]]]) -> None:
    cmap = matplotlib.colormaps["viridis"]
    for i, (step, accuracy) in enumerate(curves):
        shade = 0.15 + 0.7 * i / max(len(curves) - 1, 1)  # light (early) to dark (late)
        ax.plot(
            range(1, len(accuracy) + 1),
            accuracy,
            marker="o",
            markersize=4,
            linewidth=1.4,
            color=cmap(1 - shade),
            label=f"step {step}",
        )
    ax.set_title("accuracy by turn")
    ax.set_xlabel("turn")
    ax.set_ylabel("accuracy")
    ax.set_xticks(range(1, max(len(a) for _, a in curves) + 1))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)


def reward_figure(records: list[dict], title: str) -> Figure | None:
    """Training reward against the step, or None when no line has a reward."""
    keys = {k for r in records for k in r}
    curves = [(k, *series(records, k)) for k in ["reward/mean"] + reward_keys(keys)]
    curves = [(k, x, y) for k, x, y in curves if len(x)]
    if not curves:
        return None
    fig, ax = _new_figure(title)
    for i, (key, x, y) in enumerate(curves):
        main = key == "reward/mean"
        color = "black" if main else f"C{i}"
        smooth = moving_average(y, smoothing_window(len(y)))
        if len(y) > 1 and not np.allclose(smooth, y):  # the raw points, faint, under their trend
            ax.plot(x, y, color=color, linewidth=0.8, alpha=0.25)
        ax.plot(
            x, smooth, color=color, linewidth=2.5 if main else 1.4, label=key.split("/", 1)[1], zorder=3 if main else 2
        )
        if main:
            sx, sy = series(records, "reward/std")
            if len(sx):
                std = dict(zip(sx, sy))
                both = np.array([s in std for s in x])
                mean = smooth[both]
                spread = moving_average(np.array([std[s] for s in x[both]]), smoothing_window(int(both.sum())))
                ax.fill_between(
                    x[both], mean - spread, mean + spread, color=color, alpha=0.12, linewidth=0, label="mean ± std"
                )
    ax.set_ylabel("reward per episode")
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    return fig


def eval_figure(records: list[dict], title: str, headline: tuple[str, ...] | None = None) -> Figure | None:
    """The main evaluation metrics (`eval_keys`) against the step (searches per episode on a second axis; accuracy
    by turn in a second panel when reported), or None without any."""
    keys = {k for r in records for k in r}
    curves = [(k, *series(records, k)) for k in eval_keys(keys, headline)]
    curves = [(k, x, y) for k, x, y in curves if len(x)]
    sx, sy = series(records, EVAL_SECOND_AXIS)
    turn_curves = by_turn_curves(records)
    if not curves and not len(sx):
        return None
    fig, ax = _new_figure(title, panels=2 if turn_curves else 1)
    if turn_curves:
        _by_turn_panel(fig.axes[1], turn_curves)
    for i, (key, x, y) in enumerate(curves):
        ax.plot(x, y, marker="o", markersize=4, linewidth=1.4, color=f"C{i}", label=key.removeprefix("eval/"))
    ax.set_ylabel("metric")
    handles, labels = ax.get_legend_handles_labels()
    if len(sx):
        right = ax.twinx()
        right.plot(
            sx,
            sy,
            marker="s",
            markersize=4,
            linewidth=1.2,
            linestyle="--",
            color="dimgray",
            label=EVAL_SECOND_AXIS.removeprefix("eval/"),
        )
        right.set_ylabel("searches per episode")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.8)  # one legend for both axes
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write reward.png and eval.png into `run_dir` from its metrics.jsonl; return the paths written."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    headline = run_headline(run_dir)
    written = []
    for name, make, title in [
        ("reward.png", reward_figure, f"Training reward: {run_dir.name}"),
        ("eval.png", partial(eval_figure, headline=headline), f"Evaluation (greedy): {run_dir.name}"),
    ]:
        fig = make(records, title)
        if fig is not None:
            fig.savefig(run_dir / name)
            written.append(run_dir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rl.view.plots RUN_DIR", file=sys.stderr)
        return 2
    try:
        paths = plot_run(args[0])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
