"""See a run: one web page of its summary, its curves and every episode, turn by turn and token by token.

    python -m rl view runs/search                   # serves http://127.0.0.1:8000/ (loopback only)
    python -m rl view runs/search --port 0          # any free port; the address is printed
    python -m rl view runs/search --html run.html   # the same page as one self-contained file

The page (rl/view/assets/page.html) draws with plotly.js, inlined from the plotly wheel, so
nothing is fetched from the network, neither by the server's page nor by the static file.
It asks this module for JSON: the run (summary, metrics, checkpoints, demo results, files of
episodes) and the episodes of one file, summarized; one episode in full, with its tokens
decoded, is asked for when it is opened. So a run of many steps opens as fast as one step file reads.

The run is read as the trainer writes it (rl/run/trainer.py): config.yaml, metrics.jsonl,
timings.json, episodes/step_N.jsonl, checkpoints/step_N/, sft/model/, and for `rl demo` runs
demo.json and eval_{sft,rl}_episodes.jsonl. A line that is not JSON (a run killed mid-write)
is skipped and reported on the page. A folder holding none of config.yaml, metrics.jsonl,
episodes/ and checkpoints/ is not a run: an error names it, and nothing is served or written.
The server answers only for files inside RUN_DIR: `..`, absolute paths and symlinks that lead
out of it are refused.

A file written with --html holds every step's metrics but the episodes of HTML_STEPS steps
at most (evenly spaced, the last included) and of each such file only its first episodes
within HTML_FILE_BYTES: a long run's page stays a few MB beside plotly.js, where inlining
every episode grows by about 100 kB a step for the lookup world and by megabytes for long
episodes. The page says what it left out; the server always has everything.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from envs.base import solved
from envs.jsonl import BadLine, numbered_jsonl
from rl.run_dir import holds_run

PAGE = Path(__file__).parent / "assets" / "page.html"
# the files of episodes the page may ask for
EPISODE_FILES = re.compile(r"(episodes/step_\d+|eval_\w+_episodes)\.jsonl")
HTML_STEPS = 10  # step files whose episodes a --html page holds
HTML_FILE_BYTES = 1_000_000  # JSON of the episodes a --html page holds per file (at least one episode)


class Refused(Exception):
    """A request for something outside the run directory, or not a file of episodes."""


# ------------------------------------------------------------ reading a run


def read_jsonl(path: Path, root: Path) -> tuple[list[dict], list[str]]:
    """The JSON objects of a file's lines, and one problem per line that is not one (named by file and line):
    such a line (a run killed mid-write) is skipped, and bytes that are not UTF-8 are read as U+FFFD."""
    records, problems = [], []
    where = path.relative_to(root)

    def skip(bad: BadLine) -> None:
        problems.append(f"{where}:{bad.line}: not a JSON line ({bad.msg}), skipped")

    for n, record in numbered_jsonl(path, on_bad=skip, errors="replace"):
        if isinstance(record, dict):
            records.append(record)
        else:
            problems.append(f"{where}:{n}: not a JSON object, skipped")
    return records, problems


def metric_curves(records: list[dict]) -> dict[str, list[list[float]]]:
    """{key: [[step, value], ...]} of every numeric metric, in step order; a later line wins for a step."""
    curves: dict[str, dict[int, float]] = {}
    for r in records:
        if not isinstance(r.get("step"), int):
            continue
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # v == v: not NaN
                curves.setdefault(k, {})[r["step"]] = float(v)
    return {k: [[s, by_step[s]] for s in sorted(by_step)] for k, by_step in sorted(curves.items())}


def transition(turns: list[dict]) -> str:
    """'right-wrong' and the like: the first turn's outcome, then the last's (right: envs.base.solved)."""
    if not turns:
        return ""
    word = lambda t: "right" if solved(t.get("info") or {}) else "wrong"  # noqa: E731
    return f"{word(turns[0])}-{word(turns[-1])}"


def summary(ep: dict, index: int) -> dict:
    """What the episode table shows and filters on: no tokens, no text beyond the first action."""
    turns = ep.get("trajectory", {}).get("turns", [])
    task = ep.get("trajectory", {}).get("task", {})
    reward = ep.get("reward") or {}
    verdicts = sorted(
        {t["info"]["verdict"] for t in turns if isinstance(t.get("info"), dict) and t["info"].get("verdict")}
    )
    return {
        "index": index,
        "task": str(task.get("id", "")),
        "group": ep.get("group"),
        "reward": reward.get("total"),
        "advantage": ep.get("advantage"),
        "turns": len(turns),
        "tokens": len(ep.get("token_ids", [])),
        "transition": transition(turns),
        "verdicts": verdicts,
        "finish": ep.get("finish", ""),
        "first_action": (turns[0].get("action", "") if turns else "")[:120],
    }


STEP_STAGES = ("time/rollout_wait", "time/update", "time/sync")


def number(v) -> bool:
    """A finite int or float: what the page can show as a metric (JSON has no NaN, a bool is not a metric)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pick(d, *keys):
    """d[k1][k2]...; None where a level is missing (a config written by an older version, or hand-edited)."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def flow(value) -> str:
    """A value as one line of YAML, as a config would write it: {num_keys: 8, max_turns: 2}."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()


def config_facts(config: dict, last_step: int) -> list[list[str]]:
    """The few settings that say what a run is, as [label, text]: env, model, reward, algorithm, steps."""
    facts = []
    if pick(config, "env", "name"):
        facts.append(["env", f"{pick(config, 'env', 'name')} {flow(pick(config, 'env', 'params') or {})}"])
    if isinstance(config.get("model"), dict):
        facts.append(["model", pick(config, "model", "path") or "a tiny model built for the run (base_model/)"])
    if isinstance(config.get("reward"), list):
        terms = []
        for spec in config["reward"]:
            weight, params = pick(spec, "weight"), pick(spec, "params")
            times = "" if weight in (None, 1) else f"{weight}*"
            terms.append(f"{times}{pick(spec, 'name')}{f' {flow(params)}' if params else ''}")
        facts.append(["reward", " + ".join(terms)])
    if pick(config, "sft", "steps"):
        facts.append(["SFT", f"{pick(config, 'sft', 'steps')} steps on {pick(config, 'sft', 'data')}"])
    if pick(config, "algo", "advantage"):
        facts.append(["algorithm", str(pick(config, "algo", "advantage"))])
    if isinstance(config.get("steps"), int):
        facts.append(["steps", f"{last_step} of {config['steps']}"])
    return facts


def run_summary(root: Path, records: list[dict], demo: dict | None, problems: list[str]) -> dict:
    """What the page shows first: the run's config, how far it went, its last evaluation and the time it took."""
    config_text, config = "", {}
    if (root / "config.yaml").is_file():
        config_text = (root / "config.yaml").read_text(errors="replace")
        try:
            config = yaml.safe_load(config_text)
        except yaml.YAMLError as e:
            problems.append(f"config.yaml: not YAML ({' '.join(str(e).split())})")
        config = config if isinstance(config, dict) else {}
    steps = [r for r in records if isinstance(r.get("step"), int)]
    evaluations = [r for r in steps if any(k.startswith("eval/") for k in r)]
    final_eval = None
    if evaluations:  # the trainer evaluates once more after the last step: the last line with eval/ keys is the final
        last = evaluations[-1]
        final_eval = {
            "step": last["step"],
            "metrics": {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/") and number(v)},
        }

    # `rl demo` measures the whole run, total included; the trainer writes its stages of the last invocation only.
    stages, source = (demo or {}).get("timings"), "demo.json: the whole rl demo run"
    if not isinstance(stages, dict) and (root / "timings.json").is_file():
        stages, source = None, "timings.json: the last invocation of rl train"
        try:
            stages = json.loads((root / "timings.json").read_text())
        except json.JSONDecodeError as e:
            problems.append(f"timings.json: not JSON ({e.msg})")
    stages = {k: v for k, v in stages.items() if number(v)} if isinstance(stages, dict) else {}
    # A step's wall time is the sum of its consecutive stages (the other time/ keys break the rollout down).
    step_seconds = {
        r["step"]: sum(r[k] for k in STEP_STAGES if number(r.get(k))) for r in steps if any(k in r for k in STEP_STAGES)
    }
    return {
        "config": config_text,
        "facts": config_facts(config, steps[-1]["step"] if steps else 0),
        "final_eval": final_eval,
        "time": {"stages": stages, "source": source} if stages else None,
        "step_time": {"steps": len(step_seconds), "seconds": sum(step_seconds.values())} if step_seconds else None,
    }


def runs_near(folder: str | Path) -> str:
    """'; did you mean runs/a, runs/b?': the runs inside `folder` or the one above it (`rl view runs`,
    `rl view runs/x/episodes`)."""
    folder = Path(folder)
    near = [folder / p.name for p in sorted(folder.iterdir()) if p.is_dir() and holds_run(p)]
    if holds_run(folder.resolve().parent):
        near.append(Path(os.path.normpath(folder / "..")))
    return f"; did you mean {', '.join(map(str, near[:5]))}{', ...' if len(near) > 5 else ''}?" if near else ""


def evenly(items: list, k: int) -> list:
    """k of `items`, evenly spaced, the first and the last included; all of them when there are no more than k."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


class Run:
    """A run directory, read on request; the last few episode files stay parsed."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
        if not holds_run(self.root):
            raise FileNotFoundError(
                f"{str(run_dir)!r} holds no run: no config.yaml, metrics.jsonl, episodes/ or "
                f"checkpoints/ in it{runs_near(run_dir)}"
            )
        self.decode = token_decoder(self.root)
        self._episodes = lru_cache(maxsize=8)(self._read_episodes)

    def inside(self, relative: str) -> Path:
        """The file `relative` names, if it is inside the run directory once symlinks are followed."""
        name = unquote(relative)
        path = (self.root / name.lstrip("/")).resolve() if not Path(name).is_absolute() else None
        if path is None or not path.is_relative_to(self.root):
            raise Refused(f"{relative!r} is outside the run directory")
        return path

    def info(self) -> dict:
        """Everything the page shows first: the summary, curves, checkpoint marks, files of episodes, demo results,
        problems."""
        metrics_path = self.root / "metrics.jsonl"
        records, problems = (
            read_jsonl(metrics_path, self.root) if metrics_path.is_file() else ([], ["no metrics.jsonl"])
        )
        marks = [{"step": 0, "label": "SFT"}] if (self.root / "sft" / "model").is_dir() else []
        marks += [
            {"step": int(p.name.split("_")[1]), "label": "checkpoint"}
            for p in sorted((self.root / "checkpoints").glob("step_*"))
        ]
        steps = sorted(self.root.glob("episodes/step_*.jsonl"))
        evals = sorted(p.name for p in self.root.glob("eval_*_episodes.jsonl"))
        demo = None
        if (self.root / "demo.json").is_file():
            try:
                demo = json.loads((self.root / "demo.json").read_text())
            except json.JSONDecodeError as e:
                problems.append(f"demo.json: not JSON ({e.msg})")
        return {
            "name": self.root.name,
            "summary": run_summary(self.root, records, demo, problems),
            "curves": metric_curves(records),
            "marks": marks,
            "steps": [{"step": int(p.stem.split("_")[1]), "file": str(p.relative_to(self.root))} for p in steps],
            "eval_files": evals,
            "demo": demo,
            "problems": problems,
            "left_out": [],  # what a --html file does not hold, one line each
        }

    def _read_episodes(self, path: Path, mtime: float) -> tuple[list[dict], list[str]]:
        return read_jsonl(path, self.root)  # mtime: a file rewritten since is read again

    def episodes_of(self, relative: str) -> tuple[list[dict], list[str]]:
        if not EPISODE_FILES.fullmatch(relative):
            raise Refused(f"{relative!r} is not a file of episodes (episodes/step_N.jsonl or eval_*_episodes.jsonl)")
        path = self.inside(relative)
        if not path.is_file():
            raise FileNotFoundError(f"no file {relative!r} in the run")
        return self._episodes(path, path.stat().st_mtime)

    def episodes(self, relative: str) -> dict:
        episodes, problems = self.episodes_of(relative)
        return {"file": relative, "episodes": [summary(ep, i) for i, ep in enumerate(episodes)], "problems": problems}

    def episode(self, relative: str, index: int) -> dict:
        """One episode in full, with each token's text."""
        episodes, _ = self.episodes_of(relative)
        if not 0 <= index < len(episodes):
            raise FileNotFoundError(f"{relative!r} has no episode {index} (it has {len(episodes)})")
        ep = dict(episodes[index])
        ep["tokens"] = [self.decode(i) for i in ep.get("token_ids", [])]
        ep["summary"] = summary(ep, index)
        return ep


def token_decoder(root: Path):
    """id -> text with the run's tokenizer (the first tokenizer.json of the run's models); '#id' without one."""
    candidates = [
        root / "base_model",
        root / "sft" / "model",
        *sorted(root.glob("checkpoints/step_*/model"), reverse=True),
    ]
    found = next((c / "tokenizer.json" for c in candidates if (c / "tokenizer.json").is_file()), None)
    if found is None:
        return lambda i: f"#{i}"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(found))
    return lru_cache(maxsize=None)(lambda i: tokenizer.decode([i], skip_special_tokens=False))


# ------------------------------------------------------------ the page and the server


def page(embedded: dict | None = None) -> str:
    """The page, with plotly.js inlined; `embedded`: the answers to every request, for a file that needs no server."""
    from plotly.offline import get_plotlyjs

    # no "</script>" inside the data
    data = json.dumps(embedded).replace("</", "<\\/") if embedded is not None else "null"
    return PAGE.read_text().replace("/*PLOTLY*/", get_plotlyjs()).replace("/*EMBEDDED*/null", data)


def answer(run: Run, url: str) -> dict:
    """The JSON answer to one of the page's requests: api/run, api/episodes?file=F, api/episode?file=F&i=K."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    route = parts.path.strip("/")
    if route == "api/run":
        return run.info()
    if route in ("api/episodes", "api/episode") and "file" not in query:
        raise ValueError(f"{url}: needs file=")
    if route == "api/episodes":
        return run.episodes(query["file"])
    if route == "api/episode":
        if not query.get("i", "").isdigit():
            raise ValueError(f"{url}: needs i=<episode index>")
        return run.episode(query["file"], int(query["i"]))
    raise FileNotFoundError(f"no such request: {parts.path}")


def static_page(run: Run) -> str:
    """The page with the answers it can ask for inlined: every curve, and the episodes of HTML_STEPS steps, bounded
    in size."""
    info = run.info()
    steps = evenly(info["steps"], HTML_STEPS)
    if len(steps) < len(info["steps"]):
        info["left_out"].append(
            f"This file holds the episodes of {len(steps)} of the {len(info['steps'])} steps "
            f"({', '.join(str(s['step']) for s in steps)}); "
            f"`python -m rl view {run.root}` serves them all."
        )
    info["steps"] = steps
    embedded = {"api/run": info}
    cut = []
    for f in [s["file"] for s in steps] + info["eval_files"]:
        listed = run.episodes(f)
        kept, size = [], 0
        for ep in listed["episodes"]:
            full = run.episode(f, ep["index"])
            size += len(json.dumps(full))
            if kept and size > HTML_FILE_BYTES:
                break
            kept.append(ep)
            embedded[f"api/episode?file={f}&i={ep['index']}"] = full
        if len(kept) < len(listed["episodes"]):
            cut.append(f"{f}: {len(kept)} of {len(listed['episodes'])}")
        embedded[f"api/episodes?file={f}"] = {
            **listed,
            "episodes": kept,
            "left_out": len(listed["episodes"]) - len(kept),
        }
    if cut:
        info["left_out"].append(
            f"Of these files it holds the first episodes, {HTML_FILE_BYTES / 1e6:g} MB of each "
            f"at most: {'; '.join(cut)}."
        )
    return page(embedded)


def make_server(run: Run, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server of the page, its JSON and the run's files (under /files/); call serve_forever() on it."""
    html = page().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = urlsplit(self.path).path
            try:
                if path in ("/", "/index.html"):
                    self.send(HTTPStatus.OK, "text/html; charset=utf-8", html)
                elif path.startswith("/files/"):
                    file = run.inside(path.removeprefix("/files/"))
                    if not file.is_file():
                        raise FileNotFoundError(f"no file {path.removeprefix('/files/')!r} in the run")
                    kind = {
                        ".png": "image/png",
                        ".json": "application/json",
                        ".jsonl": "text/plain",
                        ".yaml": "text/plain",
                    }
                    self.send(HTTPStatus.OK, kind.get(file.suffix, "application/octet-stream"), file.read_bytes())
                else:
                    body = json.dumps(answer(run, self.path.lstrip("/"))).encode()
                    self.send(HTTPStatus.OK, "application/json", body)
            except Refused as e:
                self.error(HTTPStatus.FORBIDDEN, e)
            except FileNotFoundError as e:
                self.error(HTTPStatus.NOT_FOUND, e)
            except ValueError as e:
                self.error(HTTPStatus.BAD_REQUEST, e)

        def error(self, status: HTTPStatus, e: Exception) -> None:
            self.send(status, "application/json", json.dumps({"error": str(e)}).encode())

        def send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # one line per error, none per request
            if args and str(args[1])[:1] in "45":
                sys.stderr.write(f"view: {self.requestline!r}: {args[1]}\n")

    return ThreadingHTTPServer((host, port), Handler)


def main(run_dir: str, port: int = 8000, host: str = "127.0.0.1", html: str = "") -> int:
    run = Run(run_dir)
    if html:
        Path(html).write_text(static_page(run))
        print(f"wrote {html}")
        return 0
    server = make_server(run, host, port)
    address = ":".join(map(str, server.server_address[:2]))
    print(f"serving {run.root} at http://{address}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
