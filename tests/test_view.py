"""`rl view` on a real run: what a person sees in headless Chromium, a run killed mid-write, a folder that is no run,
a long run's --html file, and the server's limits."""

import html
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from envs.base import Trajectory, Turn
from envs.lookup import LookupParams, load_tasks
from rl.cli import main as cli_main
from rl.run.demo import run_one
from rl.view import page as view
from rl.view.page import Run, make_server, transition
from tests.lookup_runs import train_lookup

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An `rl demo` run of the lookup task: a short SFT (so first answers are right and wrong), two RL steps,
    both evaluations."""
    out = tmp_path_factory.mktemp("run")
    experts = out.parent / "experts.jsonl"
    experts.write_text(
        "".join(
            json.dumps(Trajectory(task, [Turn(f" {task.metadata['answer']}", "", {"score": 1.0})]).to_dict()) + "\n"
            for task in load_tasks(LookupParams(), "train")
        )
    )
    run_one(
        str(ROOT / "configs" / "lookup.yaml"),
        [
            f"run_dir={out}",
            "steps=2",
            "save_every=0",
            "eval_every=0",
            f"sft.data={experts}",
            "sft.steps=15",
            "sft.lr=3e-3",
            "sft.warmup_steps=0",
            "sft.batch_size=8",
        ],
        samples=0,
    )
    return out


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A lookup run of 25 steps (more than a --html file holds the episodes of),
    evaluated every 10 steps and at its end."""
    out = tmp_path_factory.mktemp("long") / "run"
    train_lookup(out, "steps=25", "save_every=0", "eval_every=10")
    return out


def serve(run_dir):
    srv = make_server(Run(run_dir), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def server(run_dir):
    yield from serve(run_dir)


@pytest.fixture(scope="module")
def long_server(long_run):
    yield from serve(long_run)


def episodes(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def browse(url, screenshot=None) -> str:
    """The page's DOM after its scripts ran (virtual time: waits for the page's requests, not for the clock)."""
    assert CHROMIUM, "chromium is missing: `make test` installs it (apt-get install chromium)"
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=30000",
        "--window-size=1400,1800",
    ]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run(args + [url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rows(dom: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-index="(\d+)"', dom)]


def test_the_page_shows_curves_filters_by_transition_and_shows_every_token(run_dir, server, tmp_path):
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    step2 = episodes(run_dir / "episodes" / "step_000002.jsonl")
    by_transition = Counter(transition(e["trajectory"]["turns"]) for e in step2)
    assert len(by_transition) >= 2, by_transition  # the short SFT leaves first answers both right and wrong
    for e in (
        step2
    ):  # what the token colours read: the learner's logprobs (same weights as the engine here) and per-token advantages
        policy = [t for t, m in enumerate(e["loss_mask"]) if m]
        assert len(e["learner_logprobs"]) == len(e["token_advantages"]) == len(e["token_ids"])
        assert max(abs(e["learner_logprobs"][t] - e["logprobs"][t]) for t in policy) < 1e-3
        assert sum(e["token_advantages"]) / len(policy) == pytest.approx(e["advantage"])

    task = episodes(run_dir / "eval_rl_episodes.jsonl")[-1]["trajectory"]["task"]["id"]
    for kind in sorted(by_transition)[:2]:
        dom = browse(f"{base}?step=2&transition={kind}&demo_task={task}")
        assert 'data-ready="yes"' in dom
        assert rows(dom) == [i for i, e in enumerate(step2) if transition(e["trajectory"]["turns"]) == kind]
        assert f"{by_transition[kind]} of {len(step2)} episodes" in dom
        for name in ("sft", "rl"):  # rl demo: the SFT and RL checkpoints' episodes of one held-out task, side by side
            assert f"task <b>{task}</b>" in dom.split(f'<div id="demo-{name}">')[1].split("</pre>")[0]

    # Curves: one drawn line per metric ticked (by default the reward and its components), checkpoint and SFT marked.
    ticked = re.findall(r'<input type="checkbox" value="([^"]+)" checked', dom)
    assert ticked == ["reward/mean", "reward/outcome"]
    assert dom.count('class="trace scatter') == len(ticked)
    assert ">SFT<" in dom and ">checkpoint<" in dom

    # One episode, its tokens coloured by advantage, beside another of its group.
    i = max(range(len(step2)), key=lambda k: len(step2[k]["token_ids"]))
    mate = next(k for k, e in enumerate(step2) if e["group"] == step2[i]["group"] and k != i)
    shot = tmp_path / "episode.png"
    dom = browse(f"{base}?step=2&episode={i}&compare={mate}&tokens=advantage")
    episode, compare = (
        dom.split('<div id="compare">')[0].split('<div id="episode">')[1],
        dom.split('<div id="compare">')[1].split('<div id="demo-section"')[0],
    )
    assert episode.count('<span class="tok') == len(step2[i]["token_ids"])
    assert compare.count('<span class="tok') == len(step2[mate]["token_ids"])
    assert episode.count('class="turn"') == len(step2[i]["trajectory"]["turns"])
    assert episode.count('style="background:') == sum(a != 0 for a in step2[i]["token_advantages"])
    browse(f"{base}?step=2&episode={i}&compare={mate}&tokens=advantage", screenshot=shot)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_html_file_is_the_same_page_without_a_server(run_dir, tmp_path):
    out = tmp_path / "run.html"
    assert cli_main(["view", str(run_dir), "--html", str(out)]) == 0
    text = out.read_text()
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="http', text)  # nothing to fetch
    step1 = episodes(run_dir / "episodes" / "step_000001.jsonl")
    dom = browse(f"file://{out}?step=1&transition=wrong-wrong&episode=0&tokens=gap")
    assert rows(dom) == [i for i, e in enumerate(step1) if transition(e["trajectory"]["turns"]) == "wrong-wrong"]
    episode = dom.split('<div id="compare">')[0]
    assert episode.count('<span class="tok') == len(step1[0]["token_ids"])
    assert episode.count(" gap ") == sum(step1[0]["loss_mask"])  # each sampled token's title gives its gap
    assert dom.count('class="trace scatter') == 2


def test_a_run_killed_mid_write_still_opens_and_names_the_broken_lines(run_dir, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(run_dir, killed, ignore=shutil.ignore_patterns("checkpoints", "sft", "tb"))
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward/me')
    last = killed / "episodes" / "step_000002.jsonl"
    whole = len(last.read_text().splitlines())
    last.write_text(last.read_text() + '{"step": 2, "trajectory": {"task"')

    lines = len((run_dir / "metrics.jsonl").read_text().splitlines())
    run = Run(killed)
    info = run.info()
    assert info["problems"] == [
        f"metrics.jsonl:{lines + 1}: not a JSON line (Unterminated string starting at), skipped"
    ]
    assert [s for s, _ in info["curves"]["reward/mean"]] == [1, 2]
    listed = run.episodes("episodes/step_000002.jsonl")
    assert len(listed["episodes"]) == whole
    assert listed["problems"] == [
        f"episodes/step_000002.jsonl:{whole + 1}: not a JSON line (Expecting ':' delimiter), skipped"
    ]
    assert cli_main(["view", str(killed), "--html", str(tmp_path / "killed.html")]) == 0  # the whole run still renders
    assert f"step_000002.jsonl:{whole + 1}: not a JSON line" in (tmp_path / "killed.html").read_text()


def get(server, path: str) -> tuple[int, bytes]:
    """A raw GET: the path goes out exactly as written (no client-side normalization of `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_the_server_answers_only_for_the_run_and_on_loopback(run_dir, server, request):
    assert server.server_address[0] == "127.0.0.1"
    secret = run_dir.parent / "secret.txt"
    secret.write_text("not part of the run")
    (run_dir / "escape").symlink_to(secret)
    request.addfinalizer((run_dir / "escape").unlink)
    status, body = get(server, "/files/config.yaml")
    assert status == 200 and b"env:" in body
    for path in (
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        f"/files/{secret}",
        f"/files//{secret}",
        "/files/escape",
        "/api/episodes?file=../secret.txt",
        "/api/episode?file=episodes/../../secret.txt&i=0",
    ):
        status, body = get(server, path)
        assert status == 403 and b"not part of the run" not in body, (path, status, body)
        assert "error" in json.loads(body)
    status, body = get(server, "/api/episode?file=episodes/step_000001.jsonl&i=999")
    assert status == 404 and "has no episode 999" in json.loads(body)["error"]


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def section(dom: str, start: str, end: str) -> str:
    return dom.split(start, 1)[1].split(end, 1)[0]


@pytest.fixture(scope="module")
def long_page(long_server) -> str:
    """The long run's page as it opens, with "eval/reward" typed in the metric search."""
    dom = browse(f"http://127.0.0.1:{long_server.server_address[1]}/?find=eval/reward")
    assert 'data-ready="yes"' in dom
    return dom


def test_the_page_opens_with_a_summary_of_the_run(long_run, long_page):
    facts = section(long_page, '<div id="facts">', "</div>")
    assert "env <b>lookup {num_keys: 8, num_values: 4, max_turns: 2}</b>" in facts and "steps <b>25 of 25</b>" in facts
    assert "reward <b>outcome</b>" in facts and "algorithm <b>grpo</b>" in facts
    final = [m for m in metrics(long_run) if "eval/reward/mean" in m][-1]
    assert final["step"] == 25 and "final evaluation, after step 25:" in long_page
    shown = section(long_page, '<div id="final-eval">', '<div id="time">')
    assert (
        f"reward/mean <span>{final['eval/reward/mean']:.4f}</span>" in shown
    )  # k/8 over the 8 held-out keys: exact in 4 digits
    assert f"episodes/count <span>{final['eval/episodes/count']:.0f}</span>" in shown
    stages = json.loads((long_run / "timings.json").read_text())
    time = section(long_page, '<div id="time">', "<details>")
    assert (
        f"time in stages {sum(stages.values()):.2f} s" in time
        and "timings.json: the last invocation of rl train" in time
    )
    assert "25 steps took" in time
    assert html.escape((long_run / "config.yaml").read_text(), quote=False) in section(
        long_page, '<pre id="config">', "</pre>"
    )


def test_the_page_opens_on_the_last_step(long_run, long_page):
    step1, step25 = (episodes(long_run / "episodes" / f"step_0000{n:02d}.jsonl") for n in (1, 25))
    tasks = lambda eps: [e["trajectory"]["task"]["id"] for e in eps]  # noqa: E731
    assert tasks(step1) != tasks(step25)
    assert re.findall(r'<tr data-index="\d+"><td>\d+</td><td>([^<]*)</td>', long_page) == tasks(step25)
    assert 'Episodes <span id="file-label">of step 25</span>' in long_page


def test_the_metric_search_shows_the_metrics_named_and_those_ticked(long_page):
    picker = section(long_page, '<div id="metric-picker">', '<div id="curves"')
    labels = re.findall(r'<label( hidden="")?><input type="checkbox" value="([^"]+)"( checked="")?', picker)
    visible = {key for hidden, key, _ in labels if not hidden}
    assert visible == {"eval/reward/mean", "eval/reward/outcome", "eval/reward/std", "reward/mean", "reward/outcome"}
    assert len(labels) > 30 and f"5 of {len(labels)} metrics" in long_page


def test_coinciding_curves_are_both_drawn_and_said_to_coincide(long_run, long_page):
    # With the outcome as the only reward, reward/mean and reward/outcome are the same curve.
    steps = [m for m in metrics(long_run) if "reward/mean" in m]
    assert [m["reward/mean"] for m in steps] == [m["reward/outcome"] for m in steps]
    curves = section(long_page, '<div id="curves"', '<div id="coincide">')
    lines = re.findall(r'<path class="js-line" d="M[^"]{20,}" style="([^"]+)"', curves)
    assert len(lines) == 2 and "stroke-dasharray" not in lines[0] and "stroke-dasharray" in lines[1], lines
    assert "stroke-width: 6px" in lines[0] and "stroke-width: 2px" in lines[1]  # the dashed one on top of a wider one
    assert "reward/outcome coincides with reward/mean (drawn dashed on top of it)" in long_page
    assert "reward/outcome (= reward/mean)" in curves  # the legend


def test_each_turn_shows_the_reward_it_earned(run_dir, server):
    step2 = episodes(run_dir / "episodes" / "step_000002.jsonl")
    # The outcome is earned where the episode ends: with two turns, wrong then right, the second turn earns the 1.
    i = max(range(len(step2)), key=lambda k: (step2[k]["reward"]["outcome"], len(step2[k]["trajectory"]["turns"])))
    ep = step2[i]
    assert ep["reward"]["outcome"] == 1.0 and ep["reward"]["process"] == [0.0] * len(ep["trajectory"]["turns"])
    dom = browse(f"http://127.0.0.1:{server.server_address[1]}/?step=2&episode={i}")
    shown = re.findall(r"<b>turn (\d+)</b> reward ([-\d.]+)", section(dom, '<div id="episode">', '<div id="compare">'))
    last = len(ep["trajectory"]["turns"])
    assert shown == [(str(k), "0.000") for k in range(1, last)] + [(str(last), "1.000")]
    assert "(process 0.000 + outcome 1.000)" in dom


def test_a_folder_that_holds_no_run_is_one_line_and_exit_2_with_nothing_written(run_dir, tmp_path, capsys):
    configs = ROOT / "configs"
    before = sorted(p.name for p in configs.iterdir())
    out = tmp_path / "page.html"
    assert cli_main(["view", str(configs), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: {str(configs)!r} holds no run: no config.yaml, metrics.jsonl, episodes/ or checkpoints/ in it\n"
    )
    assert not out.exists() and sorted(p.name for p in configs.iterdir()) == before

    # Served, it fails the same way before it listens; a run's episodes/ folder points at the run.
    done = subprocess.run(
        [sys.executable, "-m", "rl", "view", str(run_dir / "episodes"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"error: {str(run_dir / 'episodes')!r} holds no run: no config.yaml, "
        f"metrics.jsonl, episodes/ or checkpoints/ in it; did you mean {run_dir}?\n"
    )


def test_the_html_file_of_a_long_run_holds_some_of_its_episodes_and_says_which(long_run, tmp_path, monkeypatch):
    out = tmp_path / "run.html"
    assert cli_main(["view", str(long_run), "--html", str(out)]) == 0
    # Every step's metrics, but the episodes of 10 steps at most: inlining all 25 would add about 2.6 MB to plotly.js.
    assert out.stat().st_size - len(get_plotlyjs()) < 1_500_000
    kept = [1, 4, 6, 9, 12, 14, 17, 20, 22, 25]
    text = out.read_text()
    assert f"This file holds the episodes of 10 of the 25 steps ({', '.join(map(str, kept))})" in text
    assert re.findall(r"episodes/step_0*(\d+)\.jsonl&i=0", text) == [str(k) for k in kept]

    # Long episodes: each file holds its first episodes within its share, and the page says how many it left out.
    monkeypatch.setattr(view, "HTML_FILE_BYTES", 20_000)
    assert cli_main(["view", str(long_run), "--html", str(out)]) == 0
    dom = browse(f"file://{out}")
    left_out = section(dom, '<div id="left-out">', "<h2>Summary</h2>")
    assert "This file holds the episodes of 10 of the 25 steps" in left_out
    held = len(rows(dom))
    assert 0 < held < 64 and f"episodes/step_000025.jsonl: {held} of 64" in left_out
    assert f"{held} of {held} episodes ({64 - held} more not in this file)" in dom
    assert re.findall(r'<option value="episodes/step_0*(\d+)\.jsonl">', dom) == [str(k) for k in kept]
