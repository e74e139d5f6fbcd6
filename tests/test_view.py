"""`rl view` on a real run: what a person sees in headless Chromium, a run killed mid-write, and the server's limits."""

import http.client
import json
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from envs.base import Trajectory, Turn
from envs.lookup import LookupParams, load_tasks
from rl.cli import main as cli_main
from rl.demo import run_one
from rl.view import Run, make_server, transition

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An `rl demo` run of the lookup task: a short SFT (so first answers are right and wrong), two RL steps, both evaluations."""
    out = tmp_path_factory.mktemp("run")
    experts = out.parent / "experts.jsonl"
    experts.write_text("".join(json.dumps(Trajectory(task, [Turn(f" {task.metadata['answer']}", "", {"score": 1.0})]).to_dict()) + "\n"
                               for task in load_tasks(LookupParams(), "train")))
    run_one(str(ROOT / "configs" / "lookup.yaml"), [f"run_dir={out}", "steps=2", "save_every=0", "eval_every=0", f"sft.data={experts}",
                                                     "sft.steps=15", "sft.lr=3e-3", "sft.warmup_steps=0", "sft.batch_size=8"], samples=0)
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    srv = make_server(Run(run_dir), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def episodes(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def browse(url, screenshot=None) -> str:
    """The page's DOM after its scripts ran (virtual time: waits for the page's requests, not for the clock)."""
    assert CHROMIUM, "chromium is missing: `make test` installs it (apt-get install chromium)"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000", "--window-size=1400,1800"]
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
    for e in step2:  # what the token colours read: the learner's logprobs (same weights as the engine here) and per-token advantages
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
    episode, compare = dom.split('<div id="compare">')[0].split('<div id="episode">')[1], dom.split('<div id="compare">')[1].split('<div id="demo-section"')[0]
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
    assert info["problems"] == [f"metrics.jsonl:{lines + 1}: not a JSON line (Unterminated string starting at), skipped"]
    assert [s for s, _ in info["curves"]["reward/mean"]] == [1, 2]
    listed = run.episodes("episodes/step_000002.jsonl")
    assert len(listed["episodes"]) == whole
    assert listed["problems"] == [f"episodes/step_000002.jsonl:{whole + 1}: not a JSON line (Expecting ':' delimiter), skipped"]
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
    for path in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", f"/files/{secret}", f"/files//{secret}", "/files/escape",
                 "/api/episodes?file=../secret.txt", "/api/episode?file=episodes/../../secret.txt&i=0"):
        status, body = get(server, path)
        assert status == 403 and b"not part of the run" not in body, (path, status, body)
        assert "error" in json.loads(body)
    status, body = get(server, "/api/episode?file=episodes/step_000001.jsonl&i=999")
    assert status == 404 and "has no episode 999" in json.loads(body)["error"]
