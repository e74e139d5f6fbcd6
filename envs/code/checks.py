"""Tests, split into what the sandbox computes and what this (trusted) process judges.

A test is a piece of Python whose last statement is the check, e.g.
`assert add(1, 2) == 3`, or, for a few HumanEval tests, a loop of asserts; any
statements before it are its context (`lst = [1, 2]`).

A structured check is a lone assert whose condition this process can evaluate itself
once a few sub-expressions are known. Those sub-expressions, the "holes", are the
parts that touch the program (`add(1, 2)`, or any name the test does not define
with trusted builtins); the sandbox evaluates them and sends back their values as
plain data, and `judge` evaluates the condition (`_h0 == 3`) here, with Python's own
operators on values rebuilt with Python's own types. A value that is not plain data
(a re.Match) comes back as an `Opaque` token: equal only to itself, with the truth
the value had, so `assert f(x)` still works. Nothing the program defines takes part
in the comparison, so no object can fake equality, and exit codes or output never count.

Everything else (a loop of asserts, statements before the assert, an assert whose calls
need a comprehension's variables, or a test that calls the problem's own helpers) is a
driven check: this process runs the test's own statements itself, with trusted builtins
and `random` seeded from a secret salt and the test, and each call into the program
becomes a question to the sandbox: evaluate `decode_cyclic('bca')` and send back the
value, as a structured check's holes are. A call to one of the problem's helpers
(HumanEval/38's `encode_cyclic`) goes to the problem's reference instead, so the program
never serves as its own oracle. Calls that need an earlier call's value
(`solution = find_zero(xs)`, then `poly(xs, solution)`) come in a later round. The
sandbox never runs the test's statements, so nothing the program writes anywhere is
taken as a verdict: only values, judged here.

Values are rebuilt within bounds (depth, integer size, hash collisions: see `decode_all`), and
every message about a value is made so that it cannot fail (`_short`).
"""

from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import math
import random
import string
import sys
import types
import warnings
from dataclasses import dataclass
from functools import lru_cache

# Names the trusted evaluator knows: pure builtins, and `math.*` / `sys.getsizeof` (MBPP uses both).
TRUSTED_FUNCTIONS = {
    name: getattr(builtins, name)
    for name in (
        "abs all any ascii bin bool bytes chr complex dict divmod "
        "enumerate filter float format frozenset hex int isinstance "
        "len list map max min oct ord pow range repr reversed round set slice sorted str sum tuple type zip"
    ).split()
}
TRUSTED_MODULES = {"math": math, "sys": types.SimpleNamespace(getsizeof=sys.getsizeof)}
TRUSTED_NAMES = {"True", "False", "None", *TRUSTED_FUNCTIONS, *TRUSTED_MODULES}
# Node types the evaluator accepts (names and attributes are checked separately).
_NODES = (
    ast.Expression, ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Call, ast.keyword, ast.Starred, ast.Load, ast.Store,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Lambda, ast.arguments, ast.arg,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.JoinedStr, ast.FormattedValue,
)  # fmt: skip


# Modules a driven check may import; it gets public attributes only, and `random` is its own seeded generator.
DRIVEN_MODULES = {
    "math": math,
    "string": string,
    "copy": types.SimpleNamespace(copy=copy.copy, deepcopy=copy.deepcopy),
    "random": None,
}
# Statements a driven check may use, besides the expressions of _NODES, public attributes and names.
_STATEMENTS = (
    ast.Module, ast.For, ast.If, ast.Assign, ast.AugAssign, ast.Assert, ast.Expr, ast.Import, ast.ImportFrom, ast.alias,
    ast.Pass, ast.Break, ast.Continue,
)  # fmt: skip
MAX_ROUNDS = 8  # rounds of dependent calls a driven check may need (HumanEval's need 2)
MAX_INT_BITS = 1 << 16  # larger integers are not rebuilt: arithmetic and printing on them could stall this process
# distinct values sharing a hash, per reply: more is a value built to make sets and dicts quadratic
MAX_COLLISIONS = 256


@dataclass(frozen=True)
class Check:
    """A test ready to run: what the sandbox executes and what this process evaluates."""

    source: str  # the test as written (shown to the agent)
    holes: tuple[str, ...]  # expressions the sandbox evaluates and returns as plain data
    condition: str  # the assert's condition over _h0, _h1, ..., evaluated here ("" for a driven check)
    calls: tuple[str, ...] = ()  # a driven check: the names whose calls go to the sandbox (the test runs here)
    helpers: tuple[str, ...] = ()  # of those, the problem's own helpers: answered by its reference, not the program


@dataclass
class TestResult:
    status: str  # passed, failed, timeout or error
    message: str = ""  # why it did not pass, short (an error, or the values the program produced)
    output: str = ""  # what the test printed, cut to the sandbox's bound
    seconds: float = 0.0  # wall time of the test's process


# ---------------------------------------------------------------- parsing


def parse(code: str) -> ast.Module:
    """ast.parse, quietly: programs and data sets are full of invalid escapes ("\\d") that only warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code)


@lru_cache(maxsize=65536)
def parse_check(source: str, shadowed: frozenset[str] = frozenset(), helpers: frozenset[str] = frozenset()) -> Check:
    """Make a lone assert structured when possible, anything else driven. Raises SyntaxError.

    `shadowed`: names the problem's own code defines (e.g. MBPP 126 defines `sum`); the test's
    uses of them are holes, not builtins. `helpers`: names the problem defines besides the
    function under test (HumanEval/32's `poly`); a test that calls one is driven, and those
    calls go to the problem's reference.
    """
    module = parse(source)
    if not module.body:
        raise SyntaxError("empty test")
    loaded = {n.id for n in ast.walk(module) if isinstance(n, ast.Name)}
    if len(module.body) == 1 and isinstance(module.body[0], ast.Assert) and not loaded & helpers:
        condition, holes = split_holes(module.body[0].test, shadowed)
        if condition is not None:
            return Check(source, tuple(holes), ast.unparse(condition))
    calls = driven_calls(module, shadowed)
    return Check(source, (), "", calls, tuple(c for c in calls if c in helpers))


def driven_calls(module: ast.Module, shadowed: frozenset[str]) -> tuple[str, ...]:
    """The names a driven test calls into the program; SyntaxError if it uses what this process will not run."""
    bound = {"__builtins__"}
    for node in ast.walk(module):
        allowed = isinstance(node, _NODES + _STATEMENTS) or (
            isinstance(node, ast.Name) and not node.id.startswith("__")
        )
        if isinstance(node, ast.Attribute):
            allowed = not node.attr.startswith("_")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            allowed = all(n in DRIVEN_MODULES for n in names) and not getattr(node, "level", 0)
            bound |= {a.asname or a.name for a in node.names}
        if not allowed:
            raise SyntaxError("a test that is not an assert may only use plain Python statements on "
                              f"{sorted(DRIVEN_MODULES)}: not {ast.unparse(node)[:60]!r}")  # fmt: skip
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        if isinstance(node, ast.arg):
            bound.add(node.arg)
    loaded = {n.id for n in ast.walk(module) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return tuple(sorted(n for n in loaded - bound if n not in TRUSTED_NAMES or n in shadowed))


def top_level_names(code: str) -> frozenset[str]:
    """Names a piece of code binds at its top level (functions, classes, assignments, imports)."""
    names = set()
    for stmt in parse(code).body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Import):  # `import math` binds the real math: that shadows nothing
            names |= {a.asname for a in stmt.names if a.asname and a.asname != a.name}
        elif isinstance(stmt, ast.ImportFrom):
            names |= {a.asname or a.name for a in stmt.names}
        else:
            names |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return frozenset(names)


def split_holes(expr: ast.expr, shadowed: frozenset[str] = frozenset()) -> tuple[ast.expr | None, list[str]]:
    """(the condition with holes replaced by `_h0`, `_h1`, ..., the holes' source), or
    (None, []) if it cannot be split."""
    trusted_names = TRUSTED_NAMES - shadowed
    local = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    local |= {
        a.arg for n in ast.walk(expr) if isinstance(n, ast.Lambda) for a in ast.walk(n.args) if isinstance(a, ast.arg)
    }
    holes: list[str] = []

    def is_trusted_callee(f: ast.expr) -> bool:
        if isinstance(f, ast.Name):
            return f.id in TRUSTED_FUNCTIONS and f.id not in shadowed
        return _is_module_attribute(f) and f.value.id not in shadowed

    def visit(node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Name) and (node.id in trusted_names or node.id in local):
            return node
        if isinstance(node, ast.Attribute) and _is_module_attribute(node) and node.value.id not in shadowed:
            return node
        if isinstance(node, ast.Call) and not is_trusted_callee(node.func):
            return hole(node)
        if isinstance(node, _NODES) and not isinstance(node, ast.Name):
            for field, value in ast.iter_fields(node):
                if field == "func" and isinstance(node, ast.Call):
                    continue  # a trusted callee (a builtin name or math.f) stays as it is
                if isinstance(value, list):
                    setattr(node, field, [visit(v) if isinstance(v, ast.AST) else v for v in value])
                elif isinstance(value, ast.AST):
                    setattr(node, field, visit(value))
            return node
        return hole(node)  # a name of the program or the context, an attribute, a walrus...

    def hole(node: ast.expr) -> ast.expr:
        if any(isinstance(n, ast.Name) and n.id in local for n in ast.walk(node)):
            raise _CannotSplit  # it needs a comprehension's variable: only the sandbox can evaluate the whole
        holes.append(ast.unparse(node))
        return ast.Name(f"_h{len(holes) - 1}", ast.Load())

    try:
        condition = visit(ast.parse(ast.unparse(expr), mode="eval").body)  # a copy: the caller's tree stays intact
    except _CannotSplit:
        return None, []
    return ast.fix_missing_locations(condition), holes


class _CannotSplit(Exception):
    pass


def _is_module_attribute(node: ast.expr) -> bool:
    """`math.<public name>` or `sys.getsizeof`."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in TRUSTED_MODULES
        and not node.attr.startswith("_")
        and hasattr(TRUSTED_MODULES[node.value.id], node.attr)
    )


def has_holes(source: str, shadowed: frozenset[str] = frozenset()) -> bool:
    """Whether the test depends on the program at all (`assert True` does not: it tests nothing)."""
    check = parse_check(source, shadowed)
    return bool(check.holes or check.calls)


# ---------------------------------------------------------------- judging


def read_values(reply: dict, n: int) -> list | TestResult:
    """The `n` values of a session's reply (see sandbox.Sandbox._collect),
    or the verdict when there are none to judge."""
    output, seconds = reply.get("output", ""), reply.get("seconds", 0.0)
    if reply["status"] in ("timeout", "error"):
        return TestResult(reply["status"], _text(reply.get("message", "")), output, seconds)
    try:
        values = decode_all(reply["values"])
        if len(values) != n:
            raise ValueError("wrong number of values")
    except (KeyError, TypeError, ValueError, RecursionError, OverflowError, MemoryError) as e:
        return TestResult("error", f"malformed values: {_text(e)}", output, seconds)
    return values


def judge(check: Check, reply: dict) -> TestResult:
    """The verdict on one structured test from the sandbox's reply."""
    values = read_values(reply, len(check.holes))
    if isinstance(values, TestResult):
        return values
    output, seconds = reply["output"], reply["seconds"]
    try:
        ok = bool(evaluate_condition(check.condition, values))
    except Exception as e:  # e.g. comparing None with an int: an error in the test, as in plain Python
        return TestResult("error", f"{type(e).__name__}: {_text(e)}"[:300], output, seconds)
    if ok:
        return TestResult("passed", "", output, seconds)
    got = "; ".join(f"{h} returned {_short(v)}" for h, v in zip(check.holes, values))
    return TestResult("failed", got[:300], output, seconds)


# ---------------------------------------------------------------- driven checks


class Drive:
    """One driven check: its statements run here, round after round, until every call it makes has a value.

        drive = Drive(check, salt)
        while not isinstance(need := drive.step(), TestResult):
            drive.answer(need, reply)   # reply: the sandbox's values of the calls in `need` (or of a part of them)
        verdict = need

    A round runs the whole test from the start with the values known so far; a call not known
    yet returns a placeholder, and an assert that touches one is skipped for this round. The
    round's verdict counts only once it needed no new call: then every value was plain data.
    A call is known by its text and by how many times the test made the same call before, so
    a program whose answers change from call to call is asked every time, as the test would.
    """

    def __init__(self, check: Check, salt: bytes):
        self.check = check
        tree = _SkipPending().visit(parse(check.source))
        self.code = compile(ast.fix_missing_locations(tree), "<test>", "exec")
        digest = hashlib.blake2b(salt + check.source.encode(), digest_size=8).digest()
        self.seed = int.from_bytes(digest, "big")  # the same inputs on every round; no program can know them
        self.known: dict[tuple[str, int], object] = {}  # (call expression, its occurrence) -> its value
        self.rounds, self.output, self.seconds = 0, "", 0.0

    def step(self) -> tuple[tuple[str, int], ...] | TestResult:
        """Run the test here; the calls it still needs (one round of questions), or its verdict."""
        wanted: dict[tuple[str, int], None] = {}
        made: dict[str, int] = {}  # how many times each call was made so far in this round
        recent: list[tuple[str, object]] = []  # the last calls made, for a failure's message
        rng = random.Random(self.seed)
        rng_module = types.SimpleNamespace(Random=random.Random, **{n: getattr(rng, n) for n in _RANDOM_FUNCTIONS})

        def import_(name, globals=None, locals=None, fromlist=(), level=0):
            return rng_module if name == "random" else DRIVEN_MODULES[name]  # names checked by driven_calls

        def caller(name: str):
            def call(*args, **kwargs):
                try:
                    expr = (
                        f"{name}({', '.join([*map(literal, args), *(f'{k}={literal(v)}' for k, v in kwargs.items())])})"
                    )
                except _Pending:
                    return _Later()  # an argument is a value still to come
                key = (expr, made.get(expr, 0))
                made[expr] = key[1] + 1
                if key not in self.known:
                    wanted[key] = None
                    return _Later()
                recent[:] = recent[-1:] + [(expr, self.known[key])]
                return copy.deepcopy(self.known[key])  # the test may change what it got

            return call

        scope = {"__builtins__": {**TRUSTED_FUNCTIONS, "__import__": import_}, "_Pending": _Pending}
        scope.update({name: caller(name) for name in self.check.calls})
        try:
            exec(self.code, scope)
            verdict = TestResult("passed")
        except _Pending:
            verdict = None
        except AssertionError:
            verdict = TestResult("failed", "; ".join(f"{e} returned {_short(v)}" for e, v in recent)[:300])
        except Exception as e:  # an error in the test, as in plain Python (or a value the program cannot be given)
            verdict = TestResult("error", f"{type(e).__name__}: {_text(e)}"[:300])
        if wanted and self.rounds < MAX_ROUNDS:
            self.rounds += 1
            return tuple(wanted)
        if wanted or verdict is None:
            verdict = TestResult("error", f"the test needs more than {MAX_ROUNDS} rounds of calls into the program")
        verdict.output, verdict.seconds = self.output, self.seconds
        return verdict

    def target(self, key: tuple[str, int]) -> str:
        """Who answers a call: "reference" for the problem's helpers, else "program"."""
        return "reference" if key[0].split("(", 1)[0] in self.check.helpers else "program"

    def answer(self, keys: tuple[tuple[str, int], ...], reply: dict) -> TestResult | None:
        """Take the sandbox's reply for some of the calls `step` asked for; the verdict if it ends the test
        (an error, a timeout)."""
        values = read_values(reply, len(keys))
        if isinstance(values, TestResult):
            return values
        self.known.update(zip(keys, values))
        if self.target(keys[0]) == "program":
            self.output, self.seconds = reply["output"], self.seconds + reply["seconds"]
        return None


_RANDOM_FUNCTIONS = (
    "random",
    "randint",
    "randrange",
    "choice",
    "choices",
    "sample",
    "shuffle",
    "uniform",
    "gauss",
    "seed",
)


class _Pending(Exception):
    """A value still to come from the sandbox was needed: the round goes on without it."""


class _Later:
    """What a call into the program returns in a round where its value is not known yet: any use of it is _Pending."""

    def _pending(self, *args, **kwargs):
        raise _Pending

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __hash__ = __len__ = __iter__ = __contains__ = (
        _pending
    )
    __getitem__ = __float__ = __int__ = __index__ = __neg__ = __abs__ = __add__ = __radd__ = __sub__ = __rsub__ = (
        _pending
    )
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __floordiv__ = __mod__ = __pow__ = __getattr__ = __call__ = (
        _pending
    )

    def __deepcopy__(self, memo):
        return self


class _SkipPending(ast.NodeTransformer):
    """`assert c` becomes `try: assert c / except _Pending: pass`: a round checks what it can."""

    def visit_Assert(self, node: ast.Assert) -> ast.Try:
        skip = ast.ExceptHandler(ast.Name("_Pending", ast.Load()), None, [ast.Pass()])
        return ast.Try([node], [skip], [], [])


def literal(v, depth: int = 0) -> str:
    """Python source that rebuilds a plain value in the sandbox (a call's argument); ValueError for anything else."""
    if isinstance(v, _Later):
        raise _Pending
    if depth > 100:
        raise ValueError("an argument nested too deep for the program")
    t = type(v)
    if v is None or t in (bool, int, str, bytes):
        return repr(v)
    if t is float:
        return repr(v) if math.isfinite(v) else f"float('{v}')"
    if t is complex:
        return f"complex({literal(v.real)}, {literal(v.imag)})"
    items = [literal(x, depth + 1) for x in v] if t in (list, tuple, set, frozenset) else []
    if t is list:
        return f"[{', '.join(items)}]"
    if t is tuple:
        return f"({''.join(x + ', ' for x in items)})"
    if t in (set, frozenset):
        return f"{t.__name__}([{', '.join(items)}])"
    if t is dict:
        return "{" + ", ".join(f"{literal(k, depth + 1)}: {literal(x, depth + 1)}" for k, x in v.items()) + "}"
    raise ValueError(f"a {t.__name__} value cannot be passed to the program")


@lru_cache(maxsize=65536)
def _compile_condition(condition: str):
    tree = ast.parse(condition, mode="eval")
    for node in ast.walk(tree):  # split_holes only builds these; checked again here, where it runs
        name_ok = isinstance(node, ast.Name) and not node.id.startswith(
            "__"
        )  # resolved in a scope of trusted names only
        if not (isinstance(node, _NODES) or name_ok or _is_module_attribute(node)):
            raise ValueError(f"untrusted construct in a condition: {ast.unparse(node)[:80]}")
    return compile(tree, "<condition>", "eval")


def evaluate_condition(condition: str, values: list):
    """Evaluate a structured check's condition here, on plain values, with trusted builtins only."""
    scope = {"__builtins__": {}, **TRUSTED_FUNCTIONS, **TRUSTED_MODULES, "True": True, "False": False, "None": None}
    scope.update({f"_h{i}": v for i, v in enumerate(values)})
    return eval(_compile_condition(condition), scope)


class Opaque:
    """A value the program returned that is not plain data (a re.Match, a generator, an object):
    it equals nothing but itself (no __eq__ of the program's is ever called) and keeps the truth it had."""

    __slots__ = ("kind", "truth")

    def __init__(self, kind: str, truth: bool):
        self.kind, self.truth = kind, truth

    def __bool__(self) -> bool:
        return self.truth

    def __repr__(self) -> str:
        return f"<{self.kind} object>"


def decode_all(tagged: list) -> list:
    """Rebuild a reply's values (forkserver.encode's tagged JSON) with this process's own types, within bounds.

    ValueError for anything out of bounds: nesting over 100, an integer over MAX_INT_BITS, a
    float or complex that does not convert, or more than MAX_COLLISIONS distinct values that
    share a hash (a set or dict of them costs time quadratic in their number, here).
    """
    if type(tagged) is not list:
        raise ValueError("not a list of values")
    by_hash: dict[int, object] = {}
    collisions = [0]

    def hashable(v):
        try:
            h = hash(v)
        except TypeError:
            return v
        first = by_hash.setdefault(h, v)
        if first is not v and type(first) is type(v) and first != v:
            collisions[0] += 1
            if collisions[0] > MAX_COLLISIONS:
                raise ValueError("too many distinct values share a hash")
        return v

    def decode(x, depth: int):
        if depth > 100:
            raise ValueError("too deep")
        if x is None or type(x) in (bool, str):
            return hashable(x)
        if type(x) is int:
            if x.bit_length() > MAX_INT_BITS:
                raise ValueError("an integer too large")
            return hashable(x)
        if type(x) is float:
            return hashable(x)
        if type(x) is list:
            return [decode(v, depth + 1) for v in x]
        if (
            type(x) is dict
            and x.keys() == {"$opaque", "truth"}
            and type(x["$opaque"]) is str
            and type(x["truth"]) is bool
        ):
            return Opaque(x["$opaque"][:60], x["truth"])
        if type(x) is not dict or len(x) != 1:
            raise ValueError("not a tagged value")
        ((tag, body),) = x.items()
        if tag == "$int" and type(body) is str and len(body) <= MAX_INT_BITS // 4 + 3:
            return hashable(int(body, 16))
        if tag == "$float" and body in ("nan", "inf", "-inf"):
            return hashable(float(body))
        if tag == "$bytes" and type(body) is str:
            return hashable(bytes.fromhex(body))
        if tag == "$complex" and type(body) is list and len(body) == 2:
            parts = [decode(v, depth + 1) for v in body]
            if not all(type(v) is float for v in parts):
                raise ValueError("a complex number's parts are not floats")
            return hashable(complex(*parts))
        if tag == "$dict" and type(body) is list and all(type(kv) is list and len(kv) == 2 for kv in body):
            return {hashable(decode(k, depth + 1)): decode(v, depth + 1) for k, v in body}
        containers = {"$tuple": tuple, "$set": set, "$frozenset": frozenset}
        if tag in containers and type(body) is list:
            return hashable(
                containers[tag](decode(v, depth + 1) for v in body)
            )  # (a set is not hashable: it passes as it is)
        raise ValueError(f"unknown tag {_text(tag)[:40]!r}")

    return [decode(v, 0) for v in tagged]


def _text(x) -> str:
    """str(x), or a plain description where even that fails (an integer too long to print, say)."""
    try:
        return str(x)
    except Exception:
        return f"<{type(x).__name__} that cannot be printed>"


def _short(value, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # an int over Python's digit limit, a structure too deep
        text = f"<{type(value).__name__} that cannot be printed>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def syntax_error(program: str) -> str:
    """ "" when the program parses, else a short description (it is then not run at all). Parsing runs no code."""
    try:
        parse(program)
    except SyntaxError as e:
        return f"{type(e).__name__}: {e.msg} (program line {e.lineno})"
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return f"the program cannot be parsed: {type(e).__name__}"
    return ""
