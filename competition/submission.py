"""Submission files: checked against the test ids before writing, and on demand."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .data import ImageTable, read_columns, read_test_csv
from .errors import CompetitionError

N_CLASSES = 10
EXAMPLES = 3
# The contest's labels are class numbers written plainly: only the exact strings "0".."9".
# "3.0", " 3", "+3" and "03" mean 3 to pandas but not to a strict grader, so they are refused.
# (An int64 label column, as predict builds, passes: str(3) == "3".)
LABELS = [str(k) for k in range(N_CLASSES)]


def problems(frame: pd.DataFrame, test_ids: np.ndarray, id_column: str) -> list[str]:
    """Everything that would make the contest reject `frame`; empty when it is valid."""
    expected = [id_column, "label"]
    if list(frame.columns) != expected:
        return [f"header is {excerpt(','.join(map(str, frame.columns)))}; expected {','.join(expected)}"]
    found: list[str] = []
    ids = frame[id_column].astype(str)
    wanted = pd.Index(test_ids.astype(str))
    _note(found, "missing ids", wanted.difference(pd.Index(ids)))
    _note(found, "ids not in the test file", pd.Index(ids).difference(wanted))
    _note(found, "duplicate ids", ids[ids.duplicated()].unique())
    bad = ~frame["label"].astype(str).isin(LABELS)
    _note(found, "labels that are not the plain integers 0-9", frame["label"][bad].astype(str).unique(),
          rows=np.flatnonzero(bad.to_numpy()))
    if not found and len(frame) != len(test_ids):
        found.append(f"{len(frame)} rows; expected {len(test_ids)}")
    return found


def _note(found: list[str], what: str, values, rows: Optional[np.ndarray] = None) -> None:
    if len(values) == 0:
        return
    examples = ", ".join(f"'{excerpt(str(v), 20)}'" for v in list(values)[:EXAMPLES])
    where = f" in rows {', '.join(str(r + 1) for r in rows[:EXAMPLES])}" if rows is not None else ""
    found.append(f"{len(values)} {what} (e.g. {examples}){where}")


def excerpt(text: str, limit: int = 40) -> str:
    """At most `limit` characters of `text` for a one-line message: others escaped as repr does."""
    shown, size = [], 0
    for char in text:
        piece = char if char.isprintable() else repr(char)[1:-1]
        if size + len(piece) > limit:
            return "".join(shown) + "..."
        shown.append(piece)
        size += len(piece)
    return "".join(shown)


def read_submission(path: Path) -> pd.DataFrame:
    """A submission CSV as strings, exactly as written."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise CompetitionError(f"{path}: no such file.") from None
    except UnicodeDecodeError:
        raise _not_text(path) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise CompetitionError(f"{path}: not a readable CSV ({excerpt(str(exc).strip(), 100)}).") from None
    # Binary junk can decode as UTF-8 (NUL and other control bytes do); a text CSV's header has none.
    if any(not (char.isprintable() or char == "\t") for name in frame.columns for char in str(name)):
        raise _not_text(path)
    return frame


def _not_text(path: Path) -> CompetitionError:
    """The error for a file that is not text: its first bytes, short and printable."""
    with open(path, "rb") as file:
        start = file.read(64).decode("utf-8", errors="backslashreplace")
    return CompetitionError(f"{path}: not a text CSV (it starts '{excerpt(start)}').")


def check_file(path: Path, test: ImageTable) -> list[str]:
    """Problems of a submission file against the test file's ids."""
    return problems(read_submission(path), test.ids, test.id_column)


def read_answers(path: Path) -> pd.DataFrame:
    """Correct answers as `id,label` strings, from a labeled test CSV or a plain id,label file."""
    if any(name.startswith("pixel") for name in read_columns(path)):
        table = read_test_csv(Path(path))
        if table.labels is None:
            raise CompetitionError(f"{path}: has no 'label' column; expected the correct answers.")
        return pd.DataFrame({"id": table.ids, "label": table.labels.astype(str)})
    frame = read_submission(path)
    if list(frame.columns).count("label") != 1 or len(frame.columns) != 2:
        raise CompetitionError(f"{path}: expected two columns, an id and 'label'.")
    id_column = next(c for c in frame.columns if c != "label")
    return pd.DataFrame({"id": frame[id_column], "label": frame["label"]})


def score(path: Path, answers_path: Path) -> tuple[float, int]:
    """Accuracy of a submission against labeled answers, and the number of rows scored."""
    answers = read_answers(answers_path)
    frame = read_submission(path)
    found = problems(frame, answers["id"].to_numpy(), frame.columns[0] if len(frame.columns) else "id")
    if found:
        raise CompetitionError(f"{path}: cannot be scored against {answers_path}: {'; '.join(found)}.")
    merged = answers.merge(frame.rename(columns={frame.columns[0]: "id"}), on="id", suffixes=("", "_sub"))
    right = pd.to_numeric(merged["label"]) == pd.to_numeric(merged["label_sub"])
    return float(right.mean()), len(merged)
