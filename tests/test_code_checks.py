"""The trusted half of a test: what is sent to the sandbox, and how its reply is judged here."""

import json

import pytest

from envs.code.checks import Opaque, decode, evaluate_condition, judge, parse_check, syntax_error, top_level_names


def reply(report, **kw):
    return {"timeout": False, "exit": 0, "seconds": 0.01, "result": json.dumps(report), "result_truncated": False, "output": "", **kw}


def test_asserts_are_split_into_calls_for_the_sandbox_and_a_condition_for_here():
    c = parse_check("assert set(similar_elements((3, 4), (4, 5))) == set((4,))")
    assert c.holes == ("similar_elements((3, 4), (4, 5))",) and c.condition == "set(_h0) == set((4,))" and not c.harness
    c = parse_check("assert math.isclose(volume(10), 4188.79, rel_tol=0.001)")
    assert c.holes == ("volume(10)",) and c.condition == "math.isclose(_h0, 4188.79, rel_tol=0.001)"
    c = parse_check("assert not is_prime(4)")
    assert c.holes == ("is_prime(4)",) and c.condition == "not _h0"
    c = parse_check("lst = list(range(3))\nassert total(lst) == sum(lst)")
    assert c.context == "lst = list(range(3))" and c.holes == ("total(lst)", "lst") and c.condition == "_h0 == sum(_h1)"
    c = parse_check("assert f(1)[0] == 2")
    assert c.holes == ("f(1)",) and c.condition == "_h0[0] == 2"


def test_names_the_problem_defines_are_not_taken_for_builtins():
    # MBPP 126 defines its own `sum`: the test's sum(10, 15) is a call into the program.
    assert parse_check("assert sum(10, 15) == 6").holes == ()
    c = parse_check("assert sum(10, 15) == 6", frozenset({"sum"}))
    assert c.holes == ("sum(10, 15)",) and c.condition == "_h0 == 6"
    assert top_level_names("import math\nimport numpy as np\nfrom os import path\nR = 3\ndef sum(a, b): pass") == {"np", "path", "R", "sum"}


def test_what_cannot_be_split_runs_under_the_harness_with_guards():
    c = parse_check("for x in range(3):\n    assert f(x) == x")
    assert not c.condition and c.harness == "for x in range(3):\n    assert _sc_truth(_sc_plain(f(x)) == _sc_plain(x))"
    c = parse_check("assert all(f(x) > 0 for x in [1, 2])")  # f(x) needs the comprehension's x
    assert not c.condition and "_sc_truth(all(" in c.harness and "_sc_plain(f(x)) > _sc_plain(0)" in c.harness


def test_judging_a_structured_reply():
    c = parse_check("assert f(1) == [1, (2, 3)]")
    assert judge(c, reply({"status": "ok", "values": [[1, {"$tuple": [2, 3]}]]})).status == "passed"
    failed = judge(c, reply({"status": "ok", "values": [[1, 2]]}))
    assert failed.status == "failed" and failed.message == "f(1) returned [1, 2]"
    assert judge(c, reply({"status": "error", "message": "NameError: f"})).message == "NameError: f"
    assert judge(c, reply({"status": "passed"})).status == "error"  # a harness report cannot pass a structured test
    assert judge(c, reply(None, result="", exit=0)).message == "the test ended without a valid report (exit status 0)"
    assert judge(c, reply(None, result="", exit=-9)).message == "the test ended without a valid report (killed by signal 9)"
    assert judge(c, reply(None, result="", timeout=True, seconds=3.0)).status == "timeout"
    assert judge(c, reply({"status": "ok", "values": [1, 2]})).message.startswith("malformed values")
    assert judge(c, {"error": "the sandbox worker failed: gone"}).status == "error"
    typed = judge(parse_check("assert f(1) < 3"), reply({"status": "ok", "values": [None]}))
    assert typed.status == "error" and typed.message.startswith("TypeError")  # as plain Python would


def test_values_are_rebuilt_with_our_own_types():
    assert decode({"$dict": [[{"$tuple": [1, 2]}, {"$set": [3]}]]}) == {(1, 2): {3}}
    assert decode({"$int": hex(10**40)}) == 10**40 and decode({"$bytes": "6869"}) == b"hi" and decode({"$complex": [1, 2]}) == 1 + 2j
    token = decode({"$opaque": "Match", "truth": True})
    assert isinstance(token, Opaque) and bool(token) and token != token.__class__("Match", True) and repr(token) == "<Match object>"
    for bad in ({"$tuple": 1}, {"$eval": "1"}, {"a": 1, "b": 2}, {"$set": [[1]]}, {"$opaque": 1, "truth": True}):
        with pytest.raises((ValueError, TypeError)):
            decode(bad)


def test_the_condition_cannot_reach_beyond_trusted_names():
    assert evaluate_condition("sorted(_h0) == [1, 2]", [[2, 1]]) is True
    for sneaky in ("_h0.__class__", "().__class__.__bases__", "__import__('os')", "open('/etc/passwd')"):
        with pytest.raises((ValueError, NameError)):
            evaluate_condition(sneaky, [1])


def test_syntax_errors_are_found_without_running_anything():
    assert syntax_error("def f(:\n") == "SyntaxError: invalid syntax (program line 1)"
    assert syntax_error("x = (" * 300) .startswith(("SyntaxError", "the program cannot be parsed"))
    assert syntax_error("import os\nos._exit(0)\n") == ""
