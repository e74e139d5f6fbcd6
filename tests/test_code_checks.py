"""The trusted half of a test: what is sent to the sandbox, and how its reply is judged here."""

import json

import pytest

from envs.code import checks
from envs.code.checks import (
    Drive,
    Opaque,
    decode_all,
    evaluate_condition,
    judge,
    parse_check,
    syntax_error,
    top_level_names,
)

SALT = b"salt"


def reply(report):
    """A session's reply as the sandbox hands it over (see sandbox.Sandbox._collect)."""
    return {"output": "", "seconds": 0.01, **report}


def decode(tagged):
    return decode_all([tagged])[0]


def test_asserts_are_split_into_calls_for_the_sandbox_and_a_condition_for_here():
    c = parse_check("assert set(similar_elements((3, 4), (4, 5))) == set((4,))")
    assert c.holes == ("similar_elements((3, 4), (4, 5))",) and c.condition == "set(_h0) == set((4,))" and not c.calls
    c = parse_check("assert math.isclose(volume(10), 4188.79, rel_tol=0.001)")
    assert c.holes == ("volume(10)",) and c.condition == "math.isclose(_h0, 4188.79, rel_tol=0.001)"
    c = parse_check("assert not is_prime(4)")
    assert c.holes == ("is_prime(4)",) and c.condition == "not _h0"
    c = parse_check("lst = list(range(3))\nassert total(lst) == sum(lst)")  # statements before the assert run here
    assert not c.condition and not c.holes and c.calls == ("total",)
    c = parse_check("assert f(1)[0] == 2")
    assert c.holes == ("f(1)",) and c.condition == "_h0[0] == 2"


def test_names_the_problem_defines_are_not_taken_for_builtins():
    # MBPP 126 defines its own `sum`: the test's sum(10, 15) is a call into the program.
    assert parse_check("assert sum(10, 15) == 6").holes == ()
    c = parse_check("assert sum(10, 15) == 6", frozenset({"sum"}))
    assert c.holes == ("sum(10, 15)",) and c.condition == "_h0 == 6"
    assert top_level_names("import math\nimport numpy as np\nfrom os import path\nR = 3\ndef sum(a, b): pass") == {
        "np",
        "path",
        "R",
        "sum",
    }


def test_what_cannot_be_split_is_driven_from_here():
    c = parse_check("for x in range(3):\n    assert f(x) == x")
    assert not c.condition and not c.holes and c.calls == ("f",)
    c = parse_check("assert all(f(x) > 0 for x in [1, 2])")  # f(x) needs the comprehension's x
    assert not c.condition and c.calls == ("f",)
    c = parse_check("import random\nfor _ in range(3):\n    s = str(random.randint(0, 9))\n    assert g(enc(s)) == s")
    assert c.calls == ("enc", "g")  # `str` is rebound by nothing here: a builtin; `s` is the test's own
    for outside in (
        "import os\nfor _ in range(2):\n    assert f(os.getpid())",
        "for x in f.__globals__:\n    assert x",
        "while True:\n    assert f()",
        "with open('x') as h:\n    assert f(h)",
    ):
        with pytest.raises(SyntaxError):
            parse_check(outside)


def drive(source, answer, salt=SALT):
    """Run a driven check to its verdict, answering each call with `answer(expr)` as the sandbox would;
    (verdict, rounds)."""
    d, rounds = Drive(parse_check(source), salt), []
    while not isinstance(need := d.step(), checks.TestResult):
        rounds.append(tuple(e for e, _ in need))
        values = [json.loads(json.dumps(answer(e))) for e, _ in need]
        assert d.answer(need, reply({"status": "ok", "values": values})) is None
    return need, rounds


def test_a_driven_check_asks_only_for_calls_and_judges_here():
    loop = (
        "import random\nfor _ in range(20):\n"
        "    s = ''.join(random.choice('abc') for _ in range(5))\n    assert dec(enc(s)) == s"
    )
    honest, rounds = drive(loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s[::-1]}))
    assert honest.status == "passed" and len(rounds) == 2  # enc's values first, then dec of each
    assert all(e.startswith("enc(") for e in rounds[0]) and all(e.startswith("dec(") for e in rounds[1])
    again, rounds_again = drive(loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s[::-1]}))
    assert rounds_again == rounds  # the same salt draws the same inputs ...
    _, rounds_salted = drive(
        loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s[::-1]}), salt=b"other"
    )
    assert (
        rounds_salted != rounds
    )  # ... and another salt (a secret per evaluation) others: the test's text alone does not tell them
    wrong, _ = drive(loop, lambda e: eval(e, {"enc": lambda s: s[::-1], "dec": lambda s: s}))
    assert wrong.status == "failed" and wrong.message.startswith("enc(") and "dec(" in wrong.message
    typed, _ = drive("for x in range(2):\n    assert f(x) < 3", lambda e: None)
    assert typed.status == "error" and typed.message.startswith("TypeError")
    opaque, _ = drive(
        "for x in range(2):\n    assert g(f(x)) == 1",
        lambda e: {"$opaque": "gen", "truth": True} if e.startswith("f") else 1,
    )
    assert opaque.status == "error" and "cannot be passed to the program" in opaque.message
    endless, _ = drive("x = 0\nfor _ in range(20):\n    x = f(x)\n    assert x > 0", lambda e: int(e[2:-1]) + 1)
    assert endless.status == "error" and "rounds" in endless.message  # each call needs the last one's value


def test_a_call_that_fails_in_the_sandbox_ends_the_driven_check():
    d = Drive(parse_check("for x in range(3):\n    assert f(x) == x"), SALT)
    need = d.step()
    assert need == (("f(0)", 0), ("f(1)", 0), ("f(2)", 0))
    verdict = d.answer(need, reply({"status": "error", "message": "ZeroDivisionError (program line 2)"}))
    assert verdict.status == "error" and verdict.message == "ZeroDivisionError (program line 2)"
    assert (
        Drive(parse_check("for x in range(3):\n    assert f(x) == x"), SALT)
        .answer(need, reply({"status": "ok"}))
        .status
        == "error"
    )


def test_the_same_call_made_twice_is_asked_twice():
    # A program whose answers change from call to call (state carried between calls) is seen as the test sees it.
    counter = iter(range(100))
    verdict, rounds = drive("for _ in range(3):\n    assert f(1) == 1", lambda e: next(counter))
    assert rounds == [("f(1)", "f(1)", "f(1)")] and verdict.status == "failed"


def test_calls_to_the_problems_helpers_go_to_its_reference():
    c = parse_check("for x in ['ab', 'cd']:\n    assert decode(encode(x)) == x", helpers=frozenset({"encode"}))
    assert c.calls == ("decode", "encode") and c.helpers == ("encode",)
    d = Drive(c, SALT)
    need = d.step()
    assert [d.target(k) for k in need] == ["reference", "reference"]
    structured = parse_check("assert decode(encode('ab')) == 'ab'", helpers=frozenset({"encode"}))
    assert not structured.condition and structured.helpers == (
        "encode",
    )  # driven, so that encode is asked of the reference


def test_judging_a_structured_reply():
    c = parse_check("assert f(1) == [1, (2, 3)]")
    assert judge(c, reply({"status": "ok", "values": [[1, {"$tuple": [2, 3]}]]})).status == "passed"
    failed = judge(c, reply({"status": "ok", "values": [[1, 2]]}))
    assert failed.status == "failed" and failed.message == "f(1) returned [1, 2]"
    assert judge(c, reply({"status": "error", "message": "NameError: f"})).message == "NameError: f"
    assert judge(c, reply({"status": "ok"})).status == "error"  # no values, no verdict
    assert judge(c, reply({"status": "timeout", "message": "timed out after 3.0 s"})).status == "timeout"
    assert judge(c, reply({"status": "ok", "values": [1, 2]})).message.startswith("malformed values")
    big = judge(parse_check("assert f(1) == 1"), reply({"status": "ok", "values": [{"$int": hex(10**4500)}]}))
    assert (
        big.status == "failed" and "cannot be printed" in big.message
    )  # over Python's digit limit: the message still comes
    typed = judge(parse_check("assert f(1) < 3"), reply({"status": "ok", "values": [None]}))
    assert typed.status == "error" and typed.message.startswith("TypeError")  # as plain Python would


def test_values_are_rebuilt_with_our_own_types():
    assert decode({"$dict": [[{"$tuple": [1, 2]}, {"$set": [3]}]]}) == {(1, 2): {3}}
    assert (
        decode({"$int": hex(10**40)}) == 10**40
        and decode({"$bytes": "6869"}) == b"hi"
        and decode({"$complex": [1.0, 2.0]}) == 1 + 2j
    )
    token = decode({"$opaque": "Match", "truth": True})
    assert (
        isinstance(token, Opaque)
        and bool(token)
        and token != token.__class__("Match", True)
        and repr(token) == "<Match object>"
    )
    assert decode({"$float": "nan"}) != decode({"$float": "nan"}) and decode(
        {"$complex": [1.5, {"$float": "inf"}]}
    ) == complex(1.5, float("inf"))
    for bad in (
        {"$tuple": 1},
        {"$eval": "1"},
        {"a": 1, "b": 2},
        {"$set": [[1]]},
        {"$opaque": 1, "truth": True},
        {"$int": hex(1 << 70000)},
        1 << 70000,
        {"$complex": [10**400, 0]},
        {"$float": "1e400"},
    ):
        with pytest.raises((ValueError, TypeError)):
            decode(bad)


def test_values_built_to_collide_in_hashes_are_refused():
    # Multiples of 2**61 - 1 all hash to 0: a set of n of them costs n**2 / 2 comparisons to build.
    colliding = [k * (2**61 - 1) for k in range(1, 2000)]
    with pytest.raises(ValueError, match="share a hash"):
        decode_all([colliding])
    with pytest.raises(ValueError, match="share a hash"):
        decode_all([{"$set": [{"$int": hex(v)} if v >= 2**53 else v for v in colliding]}])
    assert len(decode_all([list(range(100_000))])[0]) == 100_000  # ordinary values pass


def test_the_condition_cannot_reach_beyond_trusted_names():
    assert evaluate_condition("sorted(_h0) == [1, 2]", [[2, 1]]) is True
    for sneaky in ("_h0.__class__", "().__class__.__bases__", "__import__('os')", "open('/etc/passwd')"):
        with pytest.raises((ValueError, NameError)):
            evaluate_condition(sneaky, [1])


def test_syntax_errors_are_found_without_running_anything():
    assert syntax_error("def f(:\n") == "SyntaxError: invalid syntax (program line 1)"
    assert syntax_error("x = (" * 300).startswith(("SyntaxError", "the program cannot be parsed"))
    assert syntax_error("import os\nos._exit(0)\n") == ""
