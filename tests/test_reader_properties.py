"""Property-based tests of the CSV reader: valid files load exactly, malformed ones fail cleanly."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from competition import data
from competition.errors import CompetitionError
from conftest import pixel_names

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tables(draw):
    """A small contest table: images, labels, ids and how the file is laid out."""
    n = draw(st.integers(1, 4))
    # Pixels from a drawn seed, with 0 and 255 forced in somewhere: drawing 784 integers a row through
    # hypothesis took 5 of the test's 16 s, and the reader treats every value of 0-255 alike.
    images = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (n, 784))
    images.flat[draw(st.integers(0, images.size - 1))] = draw(st.sampled_from([0, 255]))
    labels = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    ids = draw(st.lists(st.text("abcXYZ0123456789_-", min_size=1, max_size=6), min_size=n, max_size=n,
                        unique=True))
    layout = draw(st.fixed_dictionaries({"bom": st.booleans(), "crlf": st.booleans(), "gzip": st.booleans(),
                                         "shuffle": st.booleans(), "pixel_start": st.sampled_from([0, 1])}))
    return images, labels, ids, layout


def render(images, labels, ids, layout, seed: int = 0) -> list[list[str]]:
    header = ["id", "label"] + pixel_names(layout["pixel_start"])
    rows = [[str(i), str(l)] + [str(v) for v in row] for i, l, row in zip(ids, labels, images)]
    order = list(range(len(header)))
    if layout["shuffle"]:
        order = list(np.random.default_rng(seed).permutation(len(header)))
        order.remove(0)
        order = [0] + order  # the id stays the first non-pixel column
    return [[line[k] for k in order] for line in [header] + rows]


def to_file(lines: list[list[str]], layout: dict) -> Path:
    eol = "\r\n" if layout["crlf"] else "\n"
    text = ("\ufeff" if layout["bom"] else "") + eol.join(",".join(line) for line in lines) + eol
    payload = gzip.compress(text.encode()) if layout["gzip"] else text.encode()
    handle = tempfile.NamedTemporaryFile(suffix=".csv", delete=False)
    handle.write(payload)
    handle.close()
    return Path(handle.name)


@SETTINGS
@given(tables())
def test_any_valid_file_loads_exactly(table) -> None:
    images, labels, ids, layout = table
    path = to_file(render(images, labels, ids, layout), layout)
    loaded = data.read_test_csv(path)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert list(loaded.ids) == ids and loaded.id_column == "id"
    np.testing.assert_array_equal(data.read_train_csv(path).images, images)


MUTATIONS = ["text_cell", "empty_cell", "big_value", "negative", "big_label", "float_label",
             "extra_field", "short_row", "drop_pixel_header", "duplicate_header", "duplicate_id",
             "no_label", "binary_junk", "truncated_gzip"]


@SETTINGS
@given(tables(), st.sampled_from(MUTATIONS), st.data())
def test_any_malformed_file_ends_in_the_projects_own_error(table, mutation: str, draw) -> None:
    images, labels, ids, layout = table
    lines = render(images, labels, ids, layout)
    row = draw.draw(st.integers(1, len(lines) - 1))
    pixel = draw.draw(st.sampled_from([k for k, name in enumerate(lines[0]) if name.startswith("pixel")]))
    label = lines[0].index("label")
    reader = data.read_train_csv
    if mutation == "text_cell":
        lines[row][pixel] = draw.draw(st.text("abcxyz!?", min_size=1, max_size=4))
    elif mutation == "empty_cell":
        lines[row][pixel] = ""
    elif mutation == "big_value":
        lines[row][pixel] = str(draw.draw(st.integers(256, 10**9)))
    elif mutation == "negative":
        lines[row][pixel] = str(draw.draw(st.integers(-10**9, -1)))
    elif mutation == "big_label":
        lines[row][label] = str(draw.draw(st.integers(10, 10**6)))
    elif mutation == "float_label":
        lines[row][label] = f"{draw.draw(st.integers(0, 8))}.5"
    elif mutation == "extra_field":
        lines[row].append("7")
    elif mutation == "short_row":
        lines[row] = lines[row][:-draw.draw(st.integers(1, 700))]
    elif mutation == "drop_pixel_header":
        for line in lines:
            del line[pixel]
    elif mutation == "duplicate_header":
        lines[0][pixel] = lines[0][label]
    elif mutation == "duplicate_id":
        lines.append(list(lines[1]))
        reader = data.read_test_csv
    elif mutation == "no_label":
        for line in lines:
            del line[label]
    path = to_file(lines, layout)
    if mutation == "binary_junk":
        # A first byte that never occurs in UTF-8 (0xF5-0xFF): junk such as C2 80 is a valid
        # character, and in front of the header it only renames the id column.
        junk = [draw.draw(st.integers(0xF5, 0xFF))] + draw.draw(st.lists(st.integers(128, 255), max_size=49))
        path.write_bytes(bytes(junk) + path.read_bytes())
    elif mutation == "truncated_gzip":
        packed = gzip.compress(path.read_bytes())
        path.write_bytes(packed[: draw.draw(st.integers(2, len(packed) - 9))])
    try:
        reader(path)
    except CompetitionError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message and len(message) > len(str(path)) + 10
    else:
        raise AssertionError(f"{mutation} loaded without an error")
