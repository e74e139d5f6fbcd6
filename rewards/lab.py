"""Reward lab: re-score recorded episodes under several reward specs and compare them.

Every statistic is a small pure function over numpy arrays, checkable by hand:

  summary            mean, std (population), min, max, n
  pearson            linear correlation; nan when either side is constant
  kendall_tau        tau-b over episodes (ties counted as in scipy), O(n log n)
  per_turn           mean process reward of turn t over the episodes that reach turn t
  farming            reward against turns and searches per episode: correlation, and mean reward per count

A spec is what a training config's `reward:` list holds (see rewards/base.py); on the
command line it is written either as YAML/JSON or as a short form (see `parse_spec`).

    python -m rewards score runs/x/episodes/ --reward outcome --reward 'outcome + 0.5*format:penalty=2'
    python -m rewards score runs/a runs/b/episodes/step_000100.jsonl --reward outcome   # several paths, pooled

A reward written for one env (rewards/search.py: search episodes) reads what that env
writes in `info`; on another env's episodes it quietly scores nothing. `env_warnings` names
such a pair, from the env in the run's config.yaml.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from envs.base import Trajectory
from envs.jsonl import loads, numbered_jsonl
from envs.registry import BUILTIN
from rewards.base import RewardSpec, build_one, build_reward

NAN = float("nan")


# ------------------------------------------------------------------ specs


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # YAML errors point at the column over several lines


def spec_of(d) -> RewardSpec:
    """A RewardSpec from its YAML mapping {name, weight, params}, or a ValueError saying what is wrong."""
    if not (isinstance(d, dict) and isinstance(d.get("name"), str) and set(d) <= {"name", "weight", "params"}):
        raise ValueError(f"a reward spec is a mapping {{name, weight, params}}, got {d!r:.60}")
    weight, params = d.get("weight", 1.0), d.get("params", {})
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not isinstance(params, dict):
        raise ValueError(
            f"reward {d['name']!r}: weight must be a number and params a mapping, got {weight!r:.20} and {params!r:.20}"
        )
    return RewardSpec(d["name"], float(weight), params)


def parse_spec(text: str) -> list[RewardSpec]:
    """One `--reward` argument -> the list of specs it combines.

    YAML/JSON, exactly as in a training config:
        '{name: outcome, weight: 2}'   or   '[{name: outcome}, {name: format, params: {penalty: 2}}]'
    Short form, terms joined by '+', each `[WEIGHT*]NAME[:key=value,...]` (values read as YAML):
        'outcome'   '2*outcome'   'outcome:binary=true + 0.5*format:penalty=2'
    """
    text = text.strip()
    if text.startswith(("{", "[")):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"reward spec {text!r:.60} is not YAML ({one_line(e)})") from None
        return [spec_of(d) for d in (loaded if isinstance(loaded, list) else [loaded])]
    specs = []
    for term in text.split("+"):
        m = re.fullmatch(r"\s*(?:([-0-9.eE]+)\s*\*\s*)?([\w.]+)\s*(?::(.*))?", term)
        if not m:
            raise ValueError(f"cannot read reward term {term!r}: expected [WEIGHT*]NAME[:key=value,...]")
        weight, name, args = m.groups()
        params = {}
        for pair in filter(None, (args or "").split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"reward {name!r}: parameter {pair!r} is not key=value")
            try:
                params[key.strip()] = yaml.safe_load(value.strip())
            except yaml.YAMLError as e:
                why = one_line(e)
                raise ValueError(f"reward {name!r}: parameter {pair!r}: the value is not YAML ({why})") from None
        try:
            specs.append(RewardSpec(name, float(weight or 1.0), params))
        except ValueError:
            raise ValueError(f"reward {name!r}: weight {weight!r} is not a number") from None
    return specs


# ------------------------------------------------------------------ episodes


def as_list(paths: str | Path | list[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def episode_files(path: str | Path) -> list[Path]:
    """A JSONL file, or the *.jsonl of a folder: a run directory's episodes/ (not its metrics), in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / "episodes").is_dir():
        path = path / "episodes"
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl under {path}")
    return files


def parse_line(line: str | bytes) -> Trajectory | None:
    """One episode line -> its Trajectory; None for a blank line or a failed rollout (never scored in training).

    A line that is not an episode is a ValueError saying why; the readers add the file and line.
    """
    if not line.strip():
        return None
    return episode_trajectory(loads(line))  # bad JSON and bad UTF-8 are ValueErrors too (envs.jsonl.BadLine)


def episode_trajectory(d) -> Trajectory | None:
    """One episode line's JSON value -> its Trajectory; None for a failed rollout; a ValueError saying why it is
    not one."""
    if not isinstance(d, dict):
        raise ValueError(f"an episode must be a JSON object, got {type(d).__name__}")
    if d.get("error"):
        return None
    d = d.get("trajectory", d)
    task, turns = (d.get("task"), d.get("turns")) if isinstance(d, dict) else (None, None)
    if not (
        isinstance(task, dict)
        and isinstance(task.get("prompt"), (str, list))
        and "id" in task
        and isinstance(turns, list)
    ):
        raise ValueError('not an episode: needs "task" {"id", "prompt"} and a list of "turns"')
    for n, turn in enumerate(turns):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("action"), str)
            and isinstance(turn.get("observation"), str)
            and isinstance(turn.get("info", {}), dict)
        ):
            raise ValueError(f'turn {n}: needs a string "action" and "observation" and an "info" object')
        score = turn.get("info", {}).get("score", 0.0)
        if not isinstance(score, (int, float)):  # the task's verdict, read as a number by every statistic
            raise ValueError(f'turn {n}: info "score" must be a number, got {score!r:.40}')
    return Trajectory.from_dict(d)


def unique_files(paths: list[str | Path]) -> dict[Path, str]:
    """Each episode file under `paths` once -> the path it was found under (a run directory and one of its files
    overlap)."""
    found: dict[Path, tuple[Path, str]] = {}
    for path in paths:
        for file in episode_files(path):
            found.setdefault(file.resolve(), (file, str(path)))
    return dict(found.values())


def load_trajectories(paths: str | Path | list[str | Path]) -> list[Trajectory]:
    """Trajectories from the trainer's episode lines ({"trajectory": ...}) or bare Trajectory.to_dict() lines, path
    after path."""
    out = []
    for file in unique_files(as_list(paths)):
        for n, d in numbered_jsonl(file):  # a line that is not JSON: envs.jsonl.BadLine names the file and line
            try:
                trajectory = episode_trajectory(d)
            except ValueError as e:
                raise ValueError(f"{file}:{n}: {e}") from None
            if trajectory is not None:
                out.append(trajectory)
    return out


def task_outcome(trajectory: Trajectory) -> float:
    """What the task judged: the last turn's info["score"] (EM, fraction of tests passed); nan without turns."""
    return float(trajectory.turns[-1].info.get("score", 0.0)) if trajectory.turns else NAN


def search_count(trajectory: Trajectory) -> int:
    """Searches made: turns the env tagged info["action"] == "search" (envs/search); 0 for other envs."""
    return sum(t.info.get("action") == "search" for t in trajectory.turns)


# ------------------------------------------------------------------ envs


def episodes_env(path: str | Path) -> str | None:
    """The env whose episodes `path` holds: env.name in the config.yaml of the run it belongs to; None outside a run.

    `path` is a run directory, its episodes/ folder, one of their files, or a run's eval_*_episodes.jsonl.
    """
    run = Path(path) if Path(path).is_dir() else Path(path).parent
    if run.name == "episodes":
        run = run.parent
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    env = config.get("env") if isinstance(config, dict) else None
    return env.get("name") if isinstance(env, dict) and isinstance(env.get("name"), str) else None


def reward_env(spec: RewardSpec) -> str | None:
    """The env a reward is written for: the built-in env its module is named after (rewards/search.py: search).

    None for a reward of any env: rewards/generic.py's, a learned one, one registered outside rewards/, and
    rewards/code.py's with `level: score`, which read info["score"], the score every env writes (envs/base.py).
    """
    if spec.params.get("level") == "score":
        return None
    module = getattr(build_one(spec), "__module__", "") or ""
    package, _, name = module.partition(".")
    return name if package == "rewards" and name in BUILTIN else None


def env_warnings(paths: str | Path | list[str | Path], texts: list[str]) -> list[str]:
    """One line for each reward written for another env than the episodes under `paths` (as their runs'
    config.yaml says)."""
    envs: dict[str, list[str]] = {}
    for path in as_list(paths):
        env = episodes_env(path)
        if env is not None:
            envs.setdefault(env, []).append(str(path))
    lines = []
    for name, wanted in dict.fromkeys((s.name, reward_env(s)) for text in texts for s in parse_spec(text)):
        for env, where in envs.items():
            if wanted is not None and env != wanted:
                lines.append(
                    f"reward {name!r} is written for {wanted} episodes, but {', '.join(where)} "
                    f"{'holds' if len(where) == 1 else 'hold'} {env} episodes "
                    f"(env.name in the run's config.yaml): "
                    f"its scores there mean nothing"
                )
    return lines


# ------------------------------------------------------------------ statistics


def summary(x: np.ndarray) -> dict[str, float]:
    """n, mean, std (population, ddof=0), min, max of x; nan statistics when x is empty."""
    if len(x) == 0:
        return {"n": 0, "mean": NAN, "std": NAN, "min": NAN, "max": NAN}
    return {
        "n": int(len(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """cov(x, y) / (std x * std y); nan when either is constant (no linear relation can be read)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denom if denom > 0 else NAN


def _tied_pairs(values: np.ndarray) -> int:
    """Pairs with equal values: the sum over distinct values of c*(c-1)/2, c = how often it occurs."""
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _count_inversions(ranks: np.ndarray) -> int:
    """Pairs i < j with ranks[i] > ranks[j] (strictly), with a Fenwick tree over the ranks 0..k-1."""
    k = int(ranks.max()) + 1 if len(ranks) else 0
    tree = [0] * (k + 1)
    inversions = 0
    for seen, r in enumerate(ranks.tolist()):
        # values <= r seen so far: prefix sum up to position r + 1
        i, not_greater = r + 1, 0
        while i > 0:
            not_greater += tree[i]
            i -= i & -i
        inversions += seen - not_greater
        i = r + 1
        while i <= k:
            tree[i] += 1
            i += i & -i
    return inversions


def _joint_ties(xs: np.ndarray, ys: np.ndarray) -> int:
    """Pairs equal in both x and y; the input is sorted by (x, y), so equal pairs form runs."""
    if len(xs) == 0:
        return 0
    new_run = np.r_[True, (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])]
    counts = np.diff(np.r_[np.flatnonzero(new_run), len(xs)])
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - tx) (n0 - ty)).

    n0 = n(n-1)/2 pairs; tx, ty pairs tied in x, in y; txy tied in both. Knight's method:
    sort by (x, y); then discordant pairs are exactly the strict inversions of y, and
    concordant = n0 - tx - ty + txy - discordant. nan when x or y is constant.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    n0 = n * (n - 1) // 2
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    tx, ty = _tied_pairs(x), _tied_pairs(y)
    txy = _joint_ties(xs, ys)
    discordant = _count_inversions(np.unique(ys, return_inverse=True)[1].ravel())
    concordant = n0 - tx - ty + txy - discordant
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return (concordant - discordant) / denom if denom > 0 else NAN


def per_turn(process: list[list[float]]) -> list[dict[str, float]]:
    """summary() of the process reward of turn t, over the episodes that have a turn t."""
    longest = max((len(p) for p in process), default=0)
    return [summary(np.array([p[t] for p in process if len(p) > t])) for t in range(longest)]


def mean_by_count(reward: np.ndarray, counts: np.ndarray) -> dict[int, float]:
    """Mean reward of the episodes with each count (of turns, of searches)."""
    return {int(c): float(reward[counts == c].mean()) for c in np.unique(counts)}


# ------------------------------------------------------------------ scoring


@dataclass
class Episodes:
    """What the statistics need of each episode besides its rewards (arrays aligned over episodes)."""

    task: np.ndarray  # task_outcome
    turns: np.ndarray  # number of agent turns
    searches: np.ndarray  # search_count
    sources: dict[str, int] = field(default_factory=dict)  # how many episodes were read under each path given

    @staticmethod
    def of(trajectories: list[Trajectory]) -> "Episodes":
        return Episodes(
            np.array([task_outcome(t) for t in trajectories], float),
            np.array([len(t.turns) for t in trajectories], int),
            np.array([search_count(t) for t in trajectories], int),
        )


@dataclass
class Scores:
    """The rewards of every episode under one spec (arrays aligned over episodes)."""

    label: str  # the spec as given
    total: np.ndarray
    outcome: np.ndarray
    process: list[list[float]]
    components: dict[str, np.ndarray] = field(default_factory=dict)  # nan where an episode lacks the component


def score(trajectories: list[Trajectory], label: str, specs: list[RewardSpec]) -> Scores:
    """Re-score every trajectory with the reward built from `specs`, as the trainer would."""
    fn = build_reward(specs)
    rewards = []
    for t in trajectories:
        try:
            rewards.append(fn(t))
        except Exception as e:  # a reward that cannot read an episode (another env's, a bad parameter): which, and why
            raise ValueError(
                f"reward {label!r} failed on the episode of task {t.task.id!r}: {type(e).__name__}: {e}"
            ) from None
    names = sorted({k for r in rewards for k in r.components})
    return Scores(
        label,
        np.array([r.total for r in rewards], float),
        np.array([r.outcome for r in rewards], float),
        [r.process for r in rewards],
        {k: np.array([r.components.get(k, NAN) for r in rewards], float) for k in names},
    )


def concat(parts: list[Scores]) -> Scores:
    """Scores of consecutive chunks of episodes, joined in order."""
    names = sorted({k for p in parts for k in p.components})
    return Scores(
        parts[0].label,
        np.concatenate([p.total for p in parts]),
        np.concatenate([p.outcome for p in parts]),
        [q for p in parts for q in p.process],
        {k: np.concatenate([p.components.get(k, np.full(len(p.total), NAN)) for p in parts]) for k in names},
    )


def chunks(files: list[Path], n: int) -> list[tuple[Path, int, int]]:
    """Split each file into about n byte ranges (file, start, end); a line belongs to the range it starts in."""
    out = []
    for file in files:
        size = file.stat().st_size
        bounds = sorted({size * i // n for i in range(n)} | {size})
        out += [(file, a, b) for a, b in zip(bounds, bounds[1:])]
    return out


def read_chunk(file: Path, start: int, end: int) -> list[Trajectory]:
    """The episodes whose lines start in [start, end) of `file`."""
    out = []
    with open(file, "rb") as f:
        f.seek(max(start - 1, 0))
        pos = start
        if start > 0:  # finish the line that byte start-1 is in; it belongs to the previous range
            pos = start - 1 + len(f.readline())
        while pos < end:
            line = f.readline()
            if not line:
                break
            try:
                trajectory = parse_line(line)
            except ValueError as e:
                raise ValueError(f"{file}, the line at byte {pos}: {e}") from None
            pos += len(line)
            if trajectory is not None:
                out.append(trajectory)
    return out


def score_chunk(job: tuple[Path, int, int, list[str]]) -> tuple[Episodes, list[Scores]]:
    """Load one byte range and score it under every spec (runs in a worker process)."""
    file, start, end, texts = job
    trajectories = read_chunk(file, start, end)
    try:
        return Episodes.of(trajectories), [score(trajectories, text, parse_spec(text)) for text in texts]
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


def score_files(
    paths: str | Path | list[str | Path], texts: list[str], workers: int = 1
) -> tuple[Episodes, list[Scores]]:
    """Load and score every episode under `paths` (files or run directories) with each spec text, over `workers`
    processes.

    Work is split by byte ranges, so a worker parses only its own lines and sends back arrays,
    never trajectories. Results are in the order of the paths and of their files whatever the number of workers.
    """
    paths = as_list(paths)
    for text in texts:  # a misspelt reward fails here, before any work is started
        build_reward(parse_spec(text))
    files = unique_files(paths)
    jobs = [(f, a, b, texts) for f, a, b in chunks(list(files), max(1, workers) * 4)]
    if not jobs:
        raise ValueError(f"{', '.join(map(str, paths))}: no episodes (the files are empty)")
    if workers <= 1:
        results = [score_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(score_chunk, jobs))
    episodes = Episodes(*(np.concatenate([getattr(e, k) for e, _ in results]) for k in ("task", "turns", "searches")))
    episodes.sources = dict.fromkeys(map(str, paths), 0)
    for (file, *_), (e, _) in zip(jobs, results):
        episodes.sources[files[file]] += len(e.task)
    return episodes, [concat([r[i] for _, r in results]) for i in range(len(texts))]


def report(episodes: Episodes, scored: list[Scores]) -> dict:
    """All statistics as one JSON-ready dict: per spec, and Kendall tau between every pair of specs.

    The farming statistics over searches are left out when no episode searched (every env but search).
    """
    specs = {}
    for s in scored:
        farming = {
            "corr_turns": pearson(s.total, episodes.turns),
            "mean_by_turns": mean_by_count(s.total, episodes.turns),
        }
        if episodes.searches.any():
            farming |= {
                "corr_searches": pearson(s.total, episodes.searches),
                "mean_by_searches": mean_by_count(s.total, episodes.searches),
            }
        specs[s.label] = {
            "total": summary(s.total),
            "outcome": summary(s.outcome),
            "components": {k: summary(v[~np.isnan(v)]) for k, v in s.components.items()},
            "per_turn": per_turn(s.process),
            "corr_task_outcome": pearson(s.total, episodes.task),
            "farming": farming,
        }
    tau = {
        f"{a.label} | {b.label}": kendall_tau(a.total, b.total) for i, a in enumerate(scored) for b in scored[i + 1 :]
    }
    return {
        "episodes": len(episodes.task),
        "sources": episodes.sources,
        "task_outcome": summary(episodes.task),
        "specs": specs,
        "kendall_tau": tau,
    }


def format_table(rep: dict) -> str:
    """The terminal view of a report: one row per spec, then tau between specs.

    The r(search) column is left out when the report has no search statistics (no episode searched);
    a correlation with a constant side has no value and reads '-'.
    """
    blank = []

    def corr(x: float, width: int = 8, digits: int = 3) -> str:
        if math.isnan(x):
            blank.append(x)
            return f"{'-':>{width}}"
        return f"{x:{width}.{digits}f}"

    searches = any("corr_searches" in s["farming"] for s in rep["specs"].values())
    head = f"{'spec':<40} {'mean':>8} {'std':>8} {'min':>8} {'max':>8} {'r(task)':>8} {'r(turns)':>8}" + (
        f" {'r(search)':>9}" if searches else ""
    )
    sources = rep.get("sources", {})
    read = f" ({', '.join(f'{path}: {n}' for path, n in sources.items())})" if len(sources) > 1 else ""
    lines = [
        f"{rep['episodes']} episodes{read}, task outcome mean {rep['task_outcome']['mean']:.4f}",
        head,
        "-" * len(head),
    ]
    for label, s in rep["specs"].items():
        t, f = s["total"], s["farming"]
        row = (
            f"{label[:40]:<40} {t['mean']:8.4f} {t['std']:8.4f} {t['min']:8.4f} {t['max']:8.4f} "
            f"{corr(s['corr_task_outcome'])} {corr(f['corr_turns'])}"
        )
        lines.append(row + (f" {corr(f['corr_searches'], 9)}" if searches else ""))
        for name, c in s["components"].items():
            lines.append(f"  {name[:38]:<38} {c['mean']:8.4f} {c['std']:8.4f} {c['min']:8.4f} {c['max']:8.4f}")
        turn_means = " ".join(f"{p['mean']:.3f}" for p in s["per_turn"][:12])
        lines.append(f"  per-turn process mean: {turn_means}")
    for pair, tau in rep["kendall_tau"].items():
        lines.append(f"Kendall tau  {pair}: {corr(tau, 0, 4)}")
    if blank:
        lines.append("-: no correlation, one side is constant")
    return "\n".join(lines)


def plot(episodes: Episodes, scored: list[Scores], out_dir: Path) -> list[Path]:
    """PNG plots (needs matplotlib): totals per spec, per-turn process means, reward against turns."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in scored:
        ax.hist(s.total, bins=30, alpha=0.5, label=s.label)
    ax.set(xlabel="total reward", ylabel="episodes", title="Reward per episode")
    ax.legend(fontsize=7)
    paths.append(out_dir / "totals.png")

    fig2, ax2 = plt.subplots(figsize=(6, 4))
    for s in scored:
        means = [p["mean"] for p in per_turn(s.process)]
        ax2.plot(range(1, len(means) + 1), means, marker="o", label=s.label)
    ax2.set(xlabel="turn", ylabel="mean process reward", title="Process reward per turn")
    ax2.legend(fontsize=7)
    paths.append(out_dir / "per_turn.png")

    fig3, ax3 = plt.subplots(figsize=(6, 4))
    for s in scored:
        by = mean_by_count(s.total, episodes.turns)
        ax3.plot(list(by), list(by.values()), marker="o", label=s.label)
    ax3.set(xlabel="turns in the episode", ylabel="mean total reward", title="Farming: reward against turns")
    ax3.legend(fontsize=7)
    paths.append(out_dir / "farming_turns.png")

    for f, p in zip((fig, fig2, fig3), paths):
        f.tight_layout()
        f.savefig(p, dpi=100)
        plt.close(f)
    return paths
