"""Every input boundary as a fuzz target: one function per boundary and the inputs to draw for it.

A target takes one drawn input and returns normally when the input got a defined result: a
value, a defined penalty (an "invalid" action), or a rejection, which is a `Rejected` error
with a one-line message, or for a command line, exit code 2 and one line on stderr. Anything
else (another exception, a traceback, a status line missing from the server) fails the target.
`tests/test_fuzz.py` runs each with a small budget, `benchmarks/fuzz.py` with a large one.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import json
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import strategies as st

from envs.code import __main__ as code_cli
from envs.code.env import extract_code
from envs.search.bm25 import BM25Index
from envs.search.env import parse_action
from envs.search.server import RetrievalServer
from rewards import __main__ as rewards_cli
from rewards import lab
from rewards.base import build_reward
from rl.config import Config, load_config
from rl.view.page import read_jsonl
from rl.view.plots import read_metrics, series

Rejected = (ValueError, FileNotFoundError)
WORK = Path(tempfile.mkdtemp(prefix="selfcorrect_fuzz_"))  # every target's files; one folder per process
atexit.register(shutil.rmtree, WORK, True)


@dataclass
class Target:
    name: str
    inputs: st.SearchStrategy  # what to draw
    check: Callable[[Any], None]  # raises AssertionError (or anything unexpected) on a crash
    examples: list = field(default_factory=list)  # inputs that once crashed, always tried first


def rejected_in_one_line(error: Exception) -> None:
    message = str(error)
    assert message and "\n" not in message, f"{type(error).__name__} without a one-line message: {message!r}"


def run_cli(main: Callable, argv: list[str]) -> None:
    """A command line in this process: exit code 0, or 2 with one line on stderr; never a traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2), f"exit code {code!r}: {text}"
    if code == 2:
        assert len(text.strip().splitlines()) == 1, f"exit 2 needs one line on stderr, got {text!r}"


def write(name: str, data: str | bytes) -> Path:
    path = WORK / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


# ---------------------------------------------------------------- the config loader


def config_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config, e.g. learner.lr."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += config_keys(type(default), prefix + f.name + ".")
        else:
            out.append(prefix + f.name)
    return out


yaml_scalars = st.sampled_from(
    [
        "0",
        "-1",
        "1e-5",
        "1e400",
        ".nan",
        "true",
        "null",
        "~",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
        "'x'",
        "[{name: outcome}]",
        "[",
        "{",
        "]",
        ":",
        "- a",
        "!!python/tuple [1]",
        "&a",
        "*b",
        "'",
        '"',
    ]
)
override = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(config_keys()) | st.text(max_size=12),
        yaml_scalars | st.text(max_size=12),
    ),
)


def check_overrides(items: list[str]) -> None:
    try:
        load_config(None, items)
    except Rejected as e:
        rejected_in_one_line(e)


yaml_line = st.builds(
    lambda k, v: f"{k}: {v}",
    st.sampled_from(["steps", "seed", "model", "learner", "reward", "1", "null", "true", "[a]", "? x", "-"]),
    yaml_scalars | st.text(max_size=10),
)
yaml_text = st.one_of(st.text(max_size=60), st.lists(yaml_line, max_size=5).map("\n".join), st.binary(max_size=40))


def check_yaml(text: str | bytes) -> None:
    try:
        load_config(write("config.yaml", text))
    except Rejected as e:
        rejected_in_one_line(e)


# ---------------------------------------------------------------- what agents write


def tagged(tags: list[str]) -> st.SearchStrategy:
    """Random text with the given tags strewn through it."""
    return st.lists(st.text(max_size=8) | st.sampled_from(tags), max_size=10).map("".join)


def check_search_action(text: str) -> None:
    kind, content = parse_action(text)
    assert kind in ("search", "judge", "answer", "invalid"), kind
    assert isinstance(content, str)
    if kind == "judge":
        assert content in ("yes", "no")
    if kind == "search":
        assert content.strip()


def check_code_extraction(text: str) -> None:
    code = extract_code(text)
    assert isinstance(code, str) and len(code) <= len(text)


# ---------------------------------------------------------------- the retrieval server


class Server:
    """One retrieval server on an ephemeral loopback port, started on first use and left running (a daemon thread)."""

    _address = None

    @classmethod
    def address(cls) -> tuple[str, int]:
        if cls._address is None:
            corpus = write(
                "corpus.jsonl",
                "".join(
                    json.dumps({"id": str(i), "contents": f"Doc {i}\npassage number {i} about fuzz"}) + "\n"
                    for i in range(5)
                ),
            )
            server = RetrievalServer(BM25Index(corpus, WORK / "bm25"), "127.0.0.1", 0, read_timeout_s=5.0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            cls._address = server.server_address[:2]
        return cls._address


def exchange(data: bytes) -> bytes:
    """Send `data`, end the request side, and read the whole answer (bounded waits, so a hang fails)."""
    with socket.create_connection(Server.address(), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


GOOD = b'POST /retrieve HTTP/1.1\r\nContent-Length: 26\r\n\r\n{"queries": ["passage 3"]}'
http_parts = st.sampled_from(
    [
        b"POST /retrieve HTTP/1.1\r\n",
        b"GET / HTTP/1.0\r\n",
        b"POST /x HTTP/1.1\r\n",
        b"BREW / HTTP/9\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"zz\r\n",
        b"\r\n",
        b'{"queries": ["a"], "topk": 2}',
        b'{"queries": 1}',
        b'{"topk": true}',
        b"\xff\xfe",
    ]
)
http_request = st.one_of(
    st.binary(max_size=200), st.lists(http_parts | st.binary(max_size=12), max_size=8).map(b"".join)
)


def check_server(data: bytes) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        answer = exchange(data)
        after = exchange(GOOD)
    # The server reads the request line as Latin-1 text: a line of only (Unicode) spaces is no request at all.
    if data.split(b"\n", 1)[0].decode("latin-1").split():
        assert answer[:9] in (b"HTTP/1.0 ", b"HTTP/1.1 ") and answer[9:12].isdigit(), f"answer {answer[:80]!r}"
    assert after.startswith(b"HTTP/1.1 200 "), f"a good request afterwards got {after[:80]!r}"
    assert "Traceback" not in err.getvalue(), err.getvalue()


# ---------------------------------------------------------------- input files of the command lines


PROBLEM = {
    "task_id": "Fuzz/0",
    "prompt": "def f(x):\n",
    "entry_point": "f",
    "canonical_solution": "    return x\n",
    "test": "def check(candidate):\n    assert candidate(1) == 1\n",
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def json_lines(record: st.SearchStrategy) -> st.SearchStrategy:
    """A file's text: JSON lines of `record` or of anything, broken lines, blank lines, or bytes."""
    line = record.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=20)
    return st.lists(line, max_size=4).map("\n".join) | st.binary(max_size=40)


sample = st.fixed_dictionaries(
    {"task_id": st.sampled_from(["Fuzz/0", "Fuzz/1", 0]) | json_values},
    optional={
        "completion": st.sampled_from(["    return x\n", "    return -x\n"]) | json_values,
        "solution": json_values,
    },
)


def check_code_evaluate(text: str | bytes) -> None:
    problems = WORK / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    samples = write("samples.jsonl", text)
    run_cli(
        code_cli.main,
        [
            "evaluate",
            "--problems",
            str(problems),
            "--samples",
            str(samples),
            "--out",
            str(WORK / "results.jsonl"),
            "--k",
            "1",
            "--workers",
            "1",
            "--timeout",
            "5",
        ],
    )


turn = st.fixed_dictionaries(
    {"action": st.text(max_size=10) | json_values, "observation": st.text(max_size=10) | json_values},
    optional={
        "info": st.fixed_dictionaries(
            {}, optional={"score": st.floats() | json_values, "action": st.just("search") | json_values}
        )
        | json_values
    },
)
episode = st.fixed_dictionaries(
    {
        "task": st.fixed_dictionaries(
            {"id": st.text(max_size=5) | json_values, "prompt": st.text(max_size=10) | json_values}
        )
        | json_values,
        "turns": st.lists(turn, max_size=3) | json_values,
    }
)
episode_line = episode | st.builds(lambda e: {"trajectory": e}, episode) | st.just({"error": "the env raised"})


def check_rewards_score(text: str | bytes) -> None:
    run_cli(
        rewards_cli.main,
        [
            "score",
            str(write("episodes.jsonl", text)),
            "--reward",
            "outcome + format",
            "--out",
            str(WORK / "lab"),
            "--workers",
            "1",
        ],
    )


def check_rewards_mistakes(text: str | bytes) -> None:
    run_cli(rewards_cli.main, ["mistakes", str(write("episodes.jsonl", text))])


reward_spec = st.one_of(
    st.text(max_size=30),
    tagged(["outcome", "format", "+", "*", "2", ":", "=", ",", "{name: outcome}", "[", "{", "weight"]),
)


def check_reward_spec(text: str) -> None:
    try:
        build_reward(lab.parse_spec(text))
    except Rejected as e:
        rejected_in_one_line(e)


# ---------------------------------------------------------------- run files: episodes and metrics


def check_episode_reader(text: str | bytes) -> None:
    path = write("episodes.jsonl", text)
    try:
        trajectories = lab.load_trajectories(path)
        episodes, scored = lab.score_files(path, ["outcome"])
    except Rejected as e:
        rejected_in_one_line(e)
    else:
        assert len(episodes.turns) == len(scored[0].total) == len(trajectories)
    records, problems = read_jsonl(path, WORK)  # the viewer skips what it cannot read and says so, line by line
    assert all(isinstance(r, dict) for r in records) and all("\n" not in p for p in problems)


metrics_line = st.fixed_dictionaries({"step": json_values}, optional={"reward/mean": st.floats() | json_values})


def check_metrics_reader(text: str | bytes) -> None:
    try:
        records = read_metrics(write("metrics.jsonl", text))
    except Rejected as e:
        rejected_in_one_line(e)
    else:
        series(records, "reward/mean")


TARGETS = [
    Target(
        "config key=value overrides",
        st.lists(override, max_size=4),
        check_overrides,
        [["steps=["], ["reward=[{name: outcome, weight: x}]"]],
    ),
    Target("config YAML file", yaml_text, check_yaml, ["1: ]", "1: 2", "null: x", b"\xff"]),
    Target(
        "search action parser",
        st.text(max_size=60)
        | tagged(["<search>", "</search>", "<judge>", "</judge>", "<answer>", "</answer>", "yes", "No", " "]),
        check_search_action,
    ),
    Target(
        "code program extraction",
        st.text(max_size=60) | tagged(["[BEGIN]", "[DONE]", "[CORRECT]", "```python\n", "```", "\n"]),
        check_code_extraction,
    ),
    Target(
        "retrieval server (socket)", http_request, check_server, [b"\xa0\nContent-Length: -1\r\n", b"\r\n", b"x\r\n"]
    ),
    Target(
        "envs.code evaluate samples file",
        json_lines(sample),
        check_code_evaluate,
        [
            '{"task_id": "Fuzz/0", "completion": "    return x\\n"}\n'
            '{"task_id": "Fuzz/0", "solution": "def f(x):\\n    return 0\\n"}'
        ],
    ),
    Target("rewards score episodes file", json_lines(episode_line), check_rewards_score, ["", "[1]"]),
    Target("rewards mistakes episodes file", json_lines(episode_line), check_rewards_mistakes, [b"\x82\xebM"]),
    Target(
        "rewards --reward spec",
        reward_spec,
        check_reward_spec,
        ["{", "[1]", "{name: outcome, weight: x}", "outcome:a=]", "e*outcome", "outcome:=2=L85ÈJ)8weight"],
    ),
    Target(
        "episode JSONL reader",
        json_lines(episode_line),
        check_episode_reader,
        [
            "",
            "[1]",
            '{"task": 1, "turns": []}',
            '{"task": {"id": 0, "prompt": ""}, "turns": [{"action": "", "observation": "", "info": {"score": "x"}}]}',
        ],
    ),
    Target(
        "metrics JSONL reader",
        json_lines(metrics_line),
        check_metrics_reader,
        ["1417667945694913.0", '{"step": [null], "reward/mean": 0.0}', '{"step": Infinity, "reward/mean": 0.0}'],
    ),
]
