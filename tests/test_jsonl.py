"""The bottom layer's shared helpers: envs/jsonl.py (JSON lines), envs/names.py (did you mean), envs.base.solved."""

import gzip

import pytest

from envs.base import solved
from envs.jsonl import BadLine, numbered_jsonl, read_jsonl
from envs.names import did_you_mean


def test_lines_read_back_with_their_numbers_blank_lines_skipped_gzipped_too(tmp_path):
    text = '{"a": 1}\n\n  \n[2, NaN]\r\n"x"\n'
    (tmp_path / "f.jsonl").write_text(text)
    (tmp_path / "f.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    for name in ("f.jsonl", "f.jsonl.gz"):
        numbered = list(numbered_jsonl(tmp_path / name))
        assert [n for n, _ in numbered] == [1, 4, 5] and numbered[0][1] == {"a": 1} and numbered[2][1] == "x"
        assert numbered[1][1][1] != numbered[1][1][1]  # NaN, as the trainer writes it
    assert read_jsonl(tmp_path / "f.jsonl")[0] == {"a": 1}


def test_a_bad_line_names_the_file_and_the_line_or_is_handed_on_and_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "reward/me\n\xff\n{"step": 4}\n')
    with pytest.raises(BadLine, match=r"metrics.jsonl:2: not JSON \(Unterminated string starting at: column 13\)") as e:
        read_jsonl(path)
    assert isinstance(e.value, ValueError) and e.value.line == 2 and e.value.msg == "Unterminated string starting at"
    bad = []
    assert read_jsonl(path, on_bad=bad.append) == [{"step": 1}, {"step": 4}]
    assert [(b.line, b.reason) for b in bad] == [
        (2, "Unterminated string starting at: column 13"),
        (3, "not UTF-8 at byte 0"),
    ]
    assert read_jsonl(path, on_bad=bad.append, errors="replace") == [{"step": 1}, {"step": 4}]  # U+FFFD: still not JSON


def test_did_you_mean():
    assert did_you_mean("outcom", ["outcome", "format"]) == "; did you mean 'outcome'?"
    assert did_you_mean("outcom", ["outcome"], parenthesised=True) == " (did you mean 'outcome'?)"
    assert did_you_mean("zzz", ["outcome"]) == "" and did_you_mean(3, ["3"]) == ""
    assert did_you_mean("4", [3, 4]) == "; did you mean '4'?"  # options are compared as text


def test_solved_is_a_score_that_reaches_one():
    assert solved({"score": 1.0}) and solved({"score": 1}) and not solved({"score": 0.99})
    assert not solved({}) and not solved({"score": "1"})
