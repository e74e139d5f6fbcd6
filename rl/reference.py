"""The config reference, generated from the config's own dataclasses: every option's key, default and doc.

    python -m rl.reference > docs/config.md

An option's doc is the `#:` comment above its field (`rl.config.field_docs`), so the reference cannot drift
from the code: tests/test_docs.py fails when docs/config.md differs from what this prints. A named option
(a `Literal`) also lists its values; each built-in env's own options (`env.params`) follow, read from the
params dataclass of its `ENV_SPEC`.

Imports only rl.config, envs.registry and rewards.base (no torch, no transformers): it runs in a second.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import yaml

from envs.registry import BUILTIN, get_env_spec
from rewards.base import RewardSpec
from rl.config import Config, field_docs

HEADER = """\
# Config reference

Generated from `rl/config.py` by `python -m rl.reference > docs/config.md`: do not edit by hand.
Every option is a key of the YAML config, and `key=value` on the command line overrides it (the value
is YAML). How a config is loaded and checked is in [configs.md](configs.md);
`python -m rl config CONFIG` prints a config resolved, with these docs beside each value.
"""


def yaml_value(value: Any) -> str:
    """A value as YAML writes it in flow style: `1.0e-06`, `''`, `[q_proj, k_proj]`, `{}`."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()


def allowed_values(hint: Any) -> tuple:
    """The values a `Literal` option takes (also through a union of `Literal`s); () for any other type."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(v for arg in typing.get_args(hint) for v in allowed_values(arg))
    return ()


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _cell(text: str) -> str:
    """Text for a table cell: `|` escaped, and `<` outside code spans (so `<judge>` shows, not as an HTML tag)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _table(cls: type, prefix: str) -> tuple[list[str], list[tuple[str, type, str]]]:
    """The rows of `cls`'s plain options under `prefix`, and its nested sections (key, class, doc)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    rows = ["| key | default | doc |", "| --- | --- | --- |"]
    nested = []
    for f in dataclasses.fields(cls):
        key, doc = prefix + f.name, docs.get(f.name, "")
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append((key, hints[f.name], doc))
            continue
        default = default_of(f)
        shown = "required" if default is dataclasses.MISSING else f"`{yaml_value(default)}`"
        values = allowed_values(hints[f.name])
        if values:
            doc += ("; " if doc else "") + "one of " + ", ".join(f"`{yaml_value(v)}`" for v in values)
        rows.append(f"| `{key}` | {_cell(shown)} | {_cell(doc)} |")
    return rows, nested


def _sections(cls: type, key: str, doc: str, level: int) -> list[str]:
    """A section's table, then each of its nested sections, depth first."""
    rows, nested = _table(cls, key + "." if key else "")
    lines = [f"{'#' * level} {f'`{key}`' if key else 'Top-level keys'}", ""]
    if doc:
        lines += [doc[0].upper() + doc[1:] + ".", ""]
    if len(rows) > 2:
        lines += rows + [""]
    for sub_key, sub_cls, sub_doc in nested:
        lines += _sections(sub_cls, sub_key, sub_doc, level)
    return lines


def config_reference() -> str:
    """Markdown listing every option of `rl.config.Config`, each reward entry's keys and every built-in env's params."""
    docs = field_docs(Config)
    top_rows, sections = _table(Config, "")
    lines = [HEADER]
    for key, cls, doc in sections:
        lines += _sections(cls, key, doc, 2)
    lines += ["## Top-level keys", "", *top_rows, ""]
    rows, _ = _table(RewardSpec, "reward[].")
    lines += [
        "## `reward[]`",
        "",
        f"Each entry of `reward` ({docs['reward']}); the rewards are in [rewards.md](rewards.md).",
        "",
    ]
    lines += rows + [""]
    lines += ["## `env.params` of each built-in env", "", "The options of `env.params` depend on `env.name`."]
    lines += ["An env given by module path brings its own params dataclass.", ""]
    for name, module in BUILTIN.items():
        rows, nested = _table(get_env_spec(name).params, "env.params.")
        lines += [f"### `env.name: {name}` (`{module}`)", "", *rows, ""]
        for sub_key, sub_cls, sub_doc in nested:
            lines += _sections(sub_cls, sub_key, sub_doc, 4)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
