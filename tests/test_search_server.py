"""The retrieval server (a real process on 127.0.0.1) and its client: round trip, errors, a slow and a killed server."""

import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from envs.base import Task
from envs.search import SearchParams, make_env
from envs.search.bm25 import BM25Index
from envs.search.env import SearchEnv
from envs.search.retrieval import Batcher, RetrievalClient, RetrievalError
from envs.search.world import WorldConfig, write_world
from rl.config import RolloutConfig
from rl.rollout.chat import TurnFormatter
from rl.rollout.loop import rollout
from tests.scripted_engine import ScriptedEngine

ROOT = Path(__file__).resolve().parents[1]


def start_server(corpus: Path, cache: Path) -> tuple[str, subprocess.Popen]:
    """`python -m envs.search serve` on a free port; returns its URL once it accepts requests."""
    cmd = [
        sys.executable,
        "-m",
        "envs.search",
        "serve",
        "--corpus",
        str(corpus),
        "--port",
        "0",
        "--cache-dir",
        str(cache),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: first_line.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = first_line.get(timeout=60)
    except queue.Empty:
        proc.kill()
        raise
    match = re.search(r"http://127\.0\.0\.1:\d+/retrieve", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()}")
    return match.group(0), proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = write_world(
        WorldConfig(seed=11, people=60, hops=[1, 2], distractors=1, questions=40), tmp_path_factory.mktemp("world")
    )
    questions = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    return out, BM25Index(out / "corpus.jsonl", out / "cache"), questions


@pytest.fixture(scope="module")
def server(world):
    out, _, _ = world
    url, proc = start_server(out / "corpus.jsonl", out / "cache")
    yield url
    stop(proc)


def post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_answers_like_the_local_index(world, server):
    _, index, questions = world
    queries = [q["question"] for q in questions[:8]] + ["qqqq zzzz"]
    client = RetrievalClient(server)
    assert client.search(queries, topk=4) == index.search(queries, topk=4)  # ids, contents and scores
    assert client.last_search_ms is not None and client.last_search_ms >= 0  # from the Server-Timing header


def test_search_r1_request_shapes(world, server):
    _, index, questions = world
    status, body = post(server, {"queries": [questions[0]["question"]]})  # topk defaults to the server's 3, no scores
    assert status == 200 and [set(d) for d in body["result"][0]] == [{"id", "contents"}] * 3
    assert body["result"][0] == [h["document"] for h in index.search([questions[0]["question"]], 3)[0]]
    assert RetrievalClient(server.removesuffix("/retrieve")).search([questions[0]["question"]], 3) == index.search(
        [questions[0]["question"]], 3
    )
    assert post(server, {"queries": "one query"}) == (
        422,
        {"detail": [{"type": "list_type", "loc": ["body", "queries"], "msg": '"queries" must be a list of strings'}]},
    )
    assert post(server.replace("/retrieve", "/search"), {"queries": []})[0] == 404
    with pytest.raises(RetrievalError, match=r"rejected the request: HTTP 422 .*topk"):
        RetrievalClient(server).search(["q"], topk=-1)


def test_env_searches_through_the_server(world, server):
    out, index, questions = world
    p = SearchParams(data=str(out), retriever=server, cache_dir=str(out / "cache"))
    env = make_env(p)
    assert isinstance(env.retriever, Batcher) and isinstance(env.retriever.retriever, RetrievalClient)
    q = questions[0]
    env.reset(Task(q["id"], q["question"], {"answers": q["answers"], "gold_doc_ids": q["gold_doc_ids"]}))
    result = env.step(f"<search>{q['question']}</search>")
    assert result.info["doc_ids"] == [h["document"]["id"] for h in index.search([q["question"]], 3)[0]]


def test_a_connection_the_server_dropped_is_reopened_at_once(world):
    out, index, questions = world
    url, first = start_server(out / "corpus.jsonl", out / "cache")
    client = RetrievalClient(url, retries=0)  # no retries: only the reconnection can save the second request
    query = [questions[0]["question"]]
    try:
        assert client.search(query) == index.search(query, 3)
    finally:
        stop(first)  # the client's kept connection now leads nowhere
    port = url.split(":")[2].split("/")[0]
    cmd = [
        sys.executable,
        "-m",
        "envs.search",
        "serve",
        "--corpus",
        str(out / "corpus.jsonl"),
        "--port",
        port,
        "--cache-dir",
        str(out / "cache"),
    ]
    second = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert second.stdout.readline().startswith("serving")  # same port, a new process
        assert client.search(query) == index.search(query, 3)
    finally:
        stop(second)


def test_a_silent_server_times_out_with_a_clear_error():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, but nobody ever answers
    try:
        client = RetrievalClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3, retries=1)
        start = time.monotonic()
        with pytest.raises(RetrievalError, match=r"failed 2 times; last: timed out after 0.3 s"):
            client.search(["anything"])
        assert time.monotonic() - start < 3.0
    finally:
        silent.close()


def test_a_server_killed_mid_run_fails_the_episodes_without_hanging(world, tiny_model_dir):
    out, _, questions = world
    url, proc = start_server(out / "corpus.jsonl", out / "cache")
    try:
        client = RetrievalClient(url, timeout_s=2.0, retries=2)
        tasks = [
            (Task(q["id"], q["question"], {"answers": q["answers"], "gold_doc_ids": q["gold_doc_ids"]}), i, i)
            for i, q in enumerate(questions[:3])
        ]
        actions = [
            f"<search>{questions[0]['question']}</search>",
            "<judge>Yes</judge>",
            "<search>second hop</search>",
            "<answer>x</answer>",
        ]

        # The server dies as the second turn's actions are written: each episode's second search finds it gone.
        def kill_at_turn_1(turn):
            if turn == 1 and proc.poll() is None:
                stop(proc)

        policy = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_model_dir), actions, on_turn=kill_at_turn_1)
        start = time.monotonic()
        limits = RolloutConfig(max_turns=4, max_turn_tokens=64, max_total_tokens=4096)
        episodes = rollout(policy, TurnFormatter(policy.tokenizer), lambda: SearchEnv(client), tasks, limits).episodes
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            stop(proc)
    assert proc.returncode is not None and elapsed < 10.0  # three episodes, each at most 3 quick refused connections
    for ep in episodes:
        assert ep.finish == "error" and f"RetrievalError: retrieval server {url} failed 3 times" in ep.error
        first, judged, failed = ep.trajectory.turns
        assert len(first.info["doc_ids"]) == 3 and judged.info["verdict"] == "yes"  # the search before the crash worked
        assert failed.action == "<search>second hop</search>" and failed.info == {}
