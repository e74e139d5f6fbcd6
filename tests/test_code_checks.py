"""The trusted half of a test: what is sent to the sandbox, and how its reply is judged here."""

import json

import pytest

from envs.code import checks
from envs.code.checks import Drive, Opaque, decode, evaluate_condition, judge, parse_check, syntax_error, top_level_names


def reply(report, **kw):
    return {"timeout": False, "exit": 0, "seconds": 0.01, "result": json.dumps(report), "result_truncated": False, "output": "", **kw}


def test_asserts_are_split_into_calls_for_the_sandbox_and_a_condition_for_here():
    c = parse_check("assert set(similar_elements((3, 4), (4, 5))) == set((4,))")
    assert c.holes == ("similar_elements((3, 4), (4, 5))",) and c.condition == "set(_h0) == set((4,))" and not c.calls
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


def test_what_cannot_be_split_is_driven_from_here():
    c = parse_check("for x in range(3):\n    assert f(x) == x")
    assert not c.condition and not c.holes and c.calls == ("f",)
    c = parse_check("assert all(f(x) > 0 for x in [1, 2])")  # f(x) needs the comprehension's x
    assert not c.condition and c.calls == ("f",)
    c = parse_check("import random\nfor _ in range(3):\n    s = str(random.randint(0, 9))\n    assert g(enc(s)) == s")
    assert c.calls == ("enc", "g")  # `str` is rebound by nothing here: a builtin; `s` is the test's own
    for outside in ("import os\nfor _ in range(2):\n    assert f(os.getpid())", "for x in f.__globals__:\n    assert x",
                    "while True:\n    assert f()", "with open('x') as h:\n    assert f(h)"):
        with pytest.raises(SyntaxError):
            parse_check(outside)


def drive(source, answer):
    """Run a driven check to its verdict, answering each call with `answer(expr)` as the sandbox would; (verdict, rounds)."""
    d, rounds = Drive(parse_check(source)), []
    while not isinstance(need := d.step(), checks.TestResult):
        rounds.append(need)
        values = [json.loads(json.dumps(answer(e))) for e in need]
        assert d.answer(need, reply({"status": "ok", "values": values})) is None
    return need, rounds


def test_a_driven_check_asks_only_for_calls_and_judges_here():
    loop = "import random\nfor _ in range(20):\n    s = ''.join(random.choice('abc') for _ in range(5))\n    assert dec(enc(s)) == s"
    honest, rounds = drive(loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s[::-1]}))
    assert honest.status == "passed" and len(rounds) == 2  # enc's values first, then dec of each
    assert all(e.startswith("enc(") for e in rounds[0]) and all(e.startswith("dec(") for e in rounds[1])
    again, rounds_again = drive(loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s[::-1]}))
    assert rounds_again == rounds  # the test's random inputs are drawn with its own seed: the same every time
    wrong, _ = drive(loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s}))
    assert wrong.status == "failed" and wrong.message.startswith("enc(") and "dec(" in wrong.message
    typed, _ = drive("for x in range(2):\n    assert f(x) < 3", lambda e: None)
    assert typed.status == "error" and typed.message.startswith("TypeError")
    opaque, _ = drive("for x in range(2):\n    assert g(f(x)) == 1", lambda e: {"$opaque": "gen", "truth": True} if e.startswith("f") else 1)
    assert opaque.status == "error" and "cannot be passed to the program" in opaque.message
    endless, _ = drive("x = 0\nfor _ in range(20):\n    x = f(x)\n    assert x > 0", lambda e: int(e[2:-1]) + 1)
    assert endless.status == "error" and "rounds" in endless.message  # each call needs the last one's value


def test_a_call_that_fails_in_the_sandbox_ends_the_driven_check():
    d = Drive(parse_check("for x in range(3):\n    assert f(x) == x"))
    need = d.step()
    assert need == ("f(0)", "f(1)", "f(2)")
    verdict = d.answer(need, reply({"status": "error", "message": "ZeroDivisionError (program line 2)"}))
    assert verdict.status == "error" and verdict.message == "ZeroDivisionError (program line 2)"
    assert Drive(parse_check("for x in range(3):\n    assert f(x) == x")).answer(need, reply({"status": "passed"})).status == "error"


def test_judging_a_structured_reply():
    c = parse_check("assert f(1) == [1, (2, 3)]")
    assert judge(c, reply({"status": "ok", "values": [[1, {"$tuple": [2, 3]}]]})).status == "passed"
    failed = judge(c, reply({"status": "ok", "values": [[1, 2]]}))
    assert failed.status == "failed" and failed.message == "f(1) returned [1, 2]"
    assert judge(c, reply({"status": "error", "message": "NameError: f"})).message == "NameError: f"
    assert judge(c, reply({"status": "passed"})).status == "error"  # no report of the sandbox is a verdict
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
