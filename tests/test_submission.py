"""Submissions: `check` says exactly what is wrong, `score` scores, disk trouble loses nothing."""
from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import predict
from competition.cli import main
from conftest import random_images, write_csv


@pytest.fixture
def ids_test(tmp_path: Path) -> Path:
    """A 6-row test file with ids 10…15 and labels (so it can also serve as answers)."""
    return write_csv(tmp_path / "test.csv", random_images(6), labels=[0, 1, 2, 3, 4, 5],
                     ids=list(range(10, 16)))


def _submission(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sub.csv"
    path.write_text(text)
    return path


VALID = "id,label\n10,0\n11,1\n12,2\n13,3\n14,9\n15,5\n"
BROKEN = {
    "header": ("ID,class\n10,0\n", "header is ID,class; expected id,label"),
    "missing": ("id,label\n10,0\n11,1\n12,2\n13,3\n", "2 missing ids (e.g. '14', '15')"),
    "extra": (VALID + "99,1\n", "1 ids not in the test file (e.g. '99')"),
    "duplicate": (VALID + "12,2\n", "1 duplicate ids (e.g. '12')"),
    "bad labels": (VALID.replace("13,3", "13,x").replace("14,9", "14,10"),
                   "2 labels that are not the plain integers 0-9 (e.g. 'x', '10') in rows 4, 5"),
    "empty label": (VALID.replace("11,1", "11,"), "1 labels that are not the plain integers 0-9 (e.g. '') in rows 2"),
    # pandas reads these as numbers 0-9; the contest wants the digit alone
    "labels not written plainly": (VALID.replace("10,0", "10,3.0").replace("11,1", "11, 1").replace("12,2", "12,+2")
                                   .replace("13,3", "13,03"),
                                   "4 labels that are not the plain integers 0-9 (e.g. '3.0', ' 1', '+2') in rows 1, 2, 3"),
}


def test_check_accepts_a_valid_submission(tmp_path: Path, ids_test: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(_submission(tmp_path, VALID)), "--test", str(ids_test)]) == 0
    assert "a valid submission" in capsys.readouterr().out


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_names_what_is_wrong(tmp_path: Path, ids_test: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    text, fragment = BROKEN[case]
    assert main(["check", str(_submission(tmp_path, text)), "--test", str(ids_test)]) == 1
    err = capsys.readouterr().err
    assert "not a valid submission" in err and fragment in err, err


def test_check_of_an_unreadable_file_is_one_line(tmp_path: Path, ids_test: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(tmp_path / "nope.csv"), "--test", str(ids_test)]) == 2
    assert capsys.readouterr().err.strip().endswith("nope.csv: no such file.")


@pytest.mark.parametrize("content", [b"\x00\x01\xff\xfe" * 500, b"\x00\x01\x02\x03" * 500,
                                     b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8])
def test_check_of_a_binary_file_is_one_short_printable_line(tmp_path: Path, ids_test: Path, content: bytes,
                                                            capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "sub.csv"
    path.write_bytes(content)
    assert main(["check", str(path), "--test", str(ids_test)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 200 and err.isprintable(), err
    assert f"{path}: not a text CSV (it starts '\\x" in err and err.endswith("...').")


def test_a_long_header_is_quoted_short(tmp_path: Path, ids_test: Path, capsys: pytest.CaptureFixture) -> None:
    path = _submission(tmp_path, "id," + ",".join(f"pixel{i}" for i in range(784)) + ",label\n10,0\n")
    assert main(["check", str(path), "--test", str(ids_test)]) == 1
    assert "  - header is id,pixel0,pixel1,pixel2,pixel3,pixel4,pi...; expected id,label\n" in capsys.readouterr().err


def test_predicted_int_labels_pass_the_check(tmp_path: Path) -> None:
    table = predict.read_test_csv(write_csv(tmp_path / "t.csv", random_images(10), ids=list(range(10))))
    frame = predict.submission_frame(table, np.arange(10))
    assert frame["label"].dtype == np.int64 and list(frame["label"]) == list(range(10))


def test_score_against_a_labeled_test_file_and_an_id_label_file(tmp_path: Path, ids_test: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    sub = _submission(tmp_path, VALID)  # 5 of 6 right: id 14 says 9, the answer is 4
    assert main(["score", str(sub), "--answers", str(ids_test)]) == 0
    assert "accuracy 0.8333 on 6 rows" in capsys.readouterr().out
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n15,5\n14,4\n13,3\n12,0\n11,1\n10,0\n")
    assert main(["score", str(sub), "--answers", str(answers)]) == 0
    assert "accuracy 0.6667 on 6 rows" in capsys.readouterr().out


def test_score_refuses_a_broken_submission(tmp_path: Path, ids_test: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["score", str(_submission(tmp_path, BROKEN["missing"][0])), "--answers", str(ids_test)]) == 2
    assert "cannot be scored" in capsys.readouterr().err


def test_full_disk_while_writing_keeps_the_previous_submission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _submission(tmp_path, "id,label\n0,1\n")
    table = predict.read_test_csv(write_csv(tmp_path / "t.csv", random_images(3)))
    frame = predict.submission_frame(table, np.array([1, 2, 3]))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(predict.CompetitionError, match="No space left on device.*previous file.*unchanged"):
        predict.write_submission(frame, out)
    assert out.read_text() == "id,label\n0,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv", "t.csv"]  # no temporary left behind


def test_unwritable_submissions_folder_is_a_clear_error(tiny_run: Path, real_data: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    def denied(*args, **kwargs):
        # Tests may run as root, which ignores folder permissions: refuse the way a read-only folder would.
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "subs" / "submission.csv"
    assert main(["predict", "--run", str(tiny_run), "--test", str(real_data["test"]), "--out", str(out)]) == 2
    assert f"{out.parent}: cannot write there (Permission denied)." in capsys.readouterr().err


def test_runs_folder_that_cannot_be_created_is_a_clear_error(train_csv: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    code = main(["train", "--train", str(train_csv), "--val-size", "10", "--runs-dir", str(blocker)])
    assert code == 2 and f"{blocker}: cannot create a run folder" in capsys.readouterr().err
    assert blocker.read_text() == "a file where the runs folder should be"
