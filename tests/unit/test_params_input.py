"""Reading a list of query-parameter sets (``list ITEMS``, ``plan --from``): formats, bad lines."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from ingest_core.cli.common import UsageError
from ingest_core.cli.params_input import open_params


def write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def rows(name: str, fmt: str | None = None) -> list[dict[str, object]]:
    with open_params(name, fmt, flag="ITEMS") as params:
        first = list(params.rows())
        assert list(params.rows()) == first  # read again from the start, same items
        assert params.count == len(first)
        return first


def problem(name: str, fmt: str | None = None) -> str:
    with pytest.raises(UsageError) as caught, open_params(name, fmt, flag="ITEMS"):
        pass
    ((flag, reason),) = caught.value.problems
    assert flag == "ITEMS"
    return reason


def test_jsonl_lines_are_params_objects_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    name = write(tmp_path, "ids.jsonl", '{"id": 1}\n\n{"id": "b", "tags": ["x", 2]}\n')
    assert rows(name) == [{"id": 1}, {"id": "b", "tags": ["x", 2]}]


def test_csv_has_a_header_row_and_an_empty_cell_leaves_the_param_out(tmp_path: Path) -> None:
    name = write(tmp_path, "s.csv", '\ufeffstation,day\nA1,2025-01-01\n"B,2",\n\n')
    assert rows(name) == [{"station": "A1", "day": "2025-01-01"}, {"station": "B,2"}]


def test_the_format_comes_from_the_flag_then_the_suffix_then_the_first_character(
    tmp_path: Path,
) -> None:
    as_jsonl = write(tmp_path, "items.txt", '{"a": "1"}\n')
    as_csv = write(tmp_path, "items.data", "a\n1\n")
    assert rows(as_jsonl) == [{"a": "1"}] and rows(as_csv) == [{"a": "1"}]
    # A .csv whose first cell happens to start with "{" is still CSV.
    odd = write(tmp_path, "odd.csv", "{a\nx\n")
    assert rows(odd) == [{"{a": "x"}]
    assert rows(as_csv, "csv") == [{"a": "1"}]


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("a.jsonl", '{"id": 1}\n{"id": 2\n', "line 2: not valid JSON"),
        ("b.jsonl", '{"id": 1}\n\n[1, 2]\n', "line 3: a JSON list, not an object"),
        ("c.jsonl", '{"id": null}\n', "line 1: param 'id': must be a string, number, boolean"),
        ("d.jsonl", '{"id": {"x": 1}}\n', "line 1: param 'id'"),
        ("e.csv", "id,day\n1,2\n3\n", "line 3: 1 fields, the header has 2"),
        ("f.csv", "id,,day\n1,2,3\n", "line 1: the header row has no name in column 2"),
        ("g.csv", "id,id\n1,2\n", "line 1: the header repeats ['id']"),
        ("h.jsonl", "\n\n", "holds no items"),
        ("i.csv", "id\n", "holds no items"),
    ],
)
def test_a_bad_line_is_named_by_its_number_and_why(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = write(tmp_path, name, text)
    assert f"{path} {reason}" in problem(path) or reason in problem(path)


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", b"id\nok\n\xff\xfe\n")
    assert "line 3: not UTF-8 text" in problem(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    assert problem(str(tmp_path / "nope.jsonl")).endswith("nope.jsonl is not a file")


def test_stdin_is_spooled_once_and_removed_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two items on stdin
    stdin = io.TextIOWrapper(io.BytesIO(b'{"id": 1}\n{"id": 2}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    # WHEN the list is opened and read twice
    with open_params("-", None, flag="ITEMS") as params:
        assert [list(params.rows()), list(params.rows())] == [[{"id": 1}, {"id": 2}]] * 2
        spooled = params.path
        assert params.stem() == "stdin" and spooled.exists()
    # THEN the spooled copy is gone once the run is over
    assert not spooled.exists()


def test_the_digest_depends_on_the_items_not_on_the_formatting(tmp_path: Path) -> None:
    compact = write(tmp_path, "a.jsonl", '{"b":2,"a":1}\n')
    spaced = write(tmp_path, "b.jsonl", '{"a": 1, "b": 2}\n\n')
    other = write(tmp_path, "c.jsonl", '{"a": 1, "b": 3}\n')
    digests = []
    for name in (compact, spaced, other):
        with open_params(name, None, flag="ITEMS") as params:
            digests.append(params.digest)
    assert digests[0] == digests[1] != digests[2]


def test_plan_from_a_list_streams_its_items_as_distributed_map_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest_core.cli import main

    # GIVEN a CSV list
    name = write(tmp_path, "ids.csv", "id,kind\n7,a\n8,\n")
    # WHEN plan splits it, with a fixed param and an index offset
    code = main(["plan", "--from", name, "--jsonl", "--query", "region=eu", "--index-offset", "10"])
    # THEN every line is an item with a global index, the list's params over --query's
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        '{"index":10,"params":{"region":"eu","id":"7","kind":"a"}}',
        '{"index":11,"params":{"region":"eu","id":"8"}}',
    ]


def test_plan_from_refuses_dates_and_names_a_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest_core.cli import main

    name = write(tmp_path, "ids.jsonl", '{"id": 1}\n"two"\n')
    assert main(["plan", "--from", name, "--start", "2025-01-01"]) == 2
    assert "--start: cannot be combined with --from" in capsys.readouterr().err
    assert main(["plan", "--from", name]) == 2
    assert f"--from: {name} line 2: a JSON str, not an object" in capsys.readouterr().err
