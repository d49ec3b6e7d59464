"""base.jsonlines: a block of lines per parser call, and the bad line named when damaged."""

from __future__ import annotations

import io
import json

import pytest

from pipeline.base.jsonlines import decode_lines, read_lines


@pytest.mark.parametrize("values", [
    [], [0], [{"p": "a\udcff\n\"b", "x": [["k", "AP8="]]}, [1, [2]], "s", None, 1.5],
])
def test_decodes_what_one_value_per_line_holds(values: list[object]) -> None:
    text = "".join(json.dumps(v) + "\n" for v in values)
    assert decode_lines(text) == values
    assert decode_lines(text.removesuffix("\n")) == values   # without the last line break


@pytest.mark.parametrize(("text", "message"), [
    ('{"a":1}\n\n2\n', "line 2: Expecting value (column 1)"),
    ("{not json\n", "line 1: Expecting property name enclosed in double quotes (column 2)"),
    # Each of these joins into a valid array of another length: still refused.
    ("[1\n2]\n", "line 1: Expecting ',' delimiter (column 3)"),
    ("1\n2,3\n", "line 2: Extra data (column 2)"),
])
def test_a_damaged_file_names_its_first_bad_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        decode_lines(text)
    assert str(err.value) == message


@pytest.mark.parametrize("block", [1, 2, 7, 64, 1 << 20])
def test_a_file_read_a_block_at_a_time_gives_every_value(block: int) -> None:
    values = [{"p": "x" * n, "n": n} for n in range(40)] + [[1, 2], "end"]
    text = "".join(json.dumps(v) + "\n" for v in values)
    assert list(read_lines(io.StringIO(text), block=block)) == values
    # A last line without its break, and lines longer than a block, come back whole.
    assert list(read_lines(io.StringIO(text.removesuffix("\n")), block=block)) == values
    assert list(read_lines(io.StringIO(""), block=block)) == []


@pytest.mark.parametrize("block", [3, 16, 1 << 20])
def test_a_damaged_line_is_named_by_its_number_in_the_file(block: int) -> None:
    text = "".join(f'{{"n":{n}}}\n' for n in range(1, 30)) + "{oops\n" + '{"n":31}\n'
    with pytest.raises(ValueError) as err:
        list(read_lines(io.StringIO(text), block=block))
    assert str(err.value) == "line 30: Expecting property name enclosed in double quotes" \
        " (column 2)"
