"""Test-time augmentation (mirror images) and ensembles of runs' probabilities."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import paddle
import pytest

from competition import checkpoint, folders, predict
from competition.data import read_test_csv, read_train_csv
from competition.errors import CompetitionError
from competition.predict import accuracy_on, average_probs, ensemble_probs, flip_images, predict_run, run_probs


@pytest.fixture(scope="module")
def other_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tiny_run with perturbed weights, re-exported: a second, different run in seconds."""
    run_dir = tmp_path_factory.mktemp("runs") / f"{tiny_run.name}-perturbed"
    shutil.copytree(tiny_run, run_dir)
    model, _ = checkpoint.load_model(run_dir)
    paddle.seed(1)
    with paddle.no_grad():
        for param in model.parameters():
            param.set_value(param + 0.05 * paddle.randn(param.shape))
    paddle.save(model.state_dict(), str(run_dir / f"{folders.CHECKPOINT}.pdparams"))
    checkpoint.save_inference(model, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def images(real_data: dict) -> np.ndarray:
    return read_test_csv(real_data["test"]).images


def test_flip_mirrors_columns_only_and_twice_is_the_identity() -> None:
    image = np.zeros((28, 28), np.uint8)
    image[3, 0], image[5, 27], image[10, 13] = 200, 7, 9
    (flipped,) = flip_images(image.reshape(1, 784)).reshape(1, 28, 28)
    assert flipped[3, 27] == 200 and flipped[5, 0] == 7 and flipped[10, 14] == 9
    assert np.count_nonzero(flipped) == 3  # nothing moved to another row
    batch = np.random.default_rng(0).integers(0, 256, (5, 784)).astype(np.uint8)
    once = flip_images(batch)
    assert once.shape == batch.shape and once.dtype == np.uint8
    assert np.array_equal(once.reshape(5, 28, 28), batch.reshape(5, 28, 28)[:, :, ::-1])
    assert np.array_equal(flip_images(once), batch)


def test_ensemble_is_the_normalized_geometric_mean_of_the_runs_probabilities(tiny_run: Path, other_run: Path,
                                                                             images: np.ndarray) -> None:
    a, b = run_probs(tiny_run, images), run_probs(other_run, images)
    assert not np.allclose(a, b, atol=1e-3)  # the perturbation made a different model
    both = ensemble_probs([tiny_run, other_run], images)
    assert both.shape == (len(images), 10) and both.dtype == np.float32
    root = np.sqrt(a.astype(np.float64) * b)
    np.testing.assert_allclose(both, root / root.sum(axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)


def test_models_combine_by_their_odds_not_their_probability_gaps() -> None:
    sharp = np.array([[0.6, 0.4, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)  # zeros (underflow) must stay finite
    smoothed = np.array([[0.05, 0.2, *[0.75 / 8] * 8]], np.float32)  # label smoothing flattens the gaps
    combined = average_probs([sharp, smoothed])
    assert combined.argmax() == 1  # 1.5 to 1 against 4 to 1; the arithmetic mean (0.325 to 0.3) picks 0
    assert np.isfinite(combined).all() and combined.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(average_probs([smoothed]), smoothed, atol=1e-7)


def test_ensemble_of_one_run_twice_is_that_run(tiny_run: Path, images: np.ndarray) -> None:
    np.testing.assert_allclose(ensemble_probs([tiny_run, tiny_run], images), run_probs(tiny_run, images),
                               atol=1e-6)


def test_ensemble_needs_a_run() -> None:
    with pytest.raises(CompetitionError, match="an ensemble needs at least one run folder."):
        ensemble_probs([], np.zeros((1, 784), np.uint8))


def test_tta_averages_the_images_and_their_mirrors(tiny_run: Path, images: np.ndarray) -> None:
    expected = (run_probs(tiny_run, images) + run_probs(tiny_run, flip_images(images))) / 2
    tta = run_probs(tiny_run, images, tta=2)
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    np.testing.assert_allclose(ensemble_probs([tiny_run], images, tta=2), expected, atol=1e-6)


def test_predict_with_two_runs_writes_a_submission_and_an_ensemble_archive(
        tiny_run: Path, other_run: Path, real_data: dict, tmp_path: Path) -> None:
    table = read_test_csv(real_data["test"])
    out = tmp_path / "subs" / "submission.csv"
    result = predict_run([tiny_run, other_run], table, out)
    submission = pd.read_csv(out)
    assert out.read_text().splitlines()[0] == "id,label"
    assert list(submission["id"]) == list(pd.read_csv(real_data["test"])["id"])
    assert submission["label"].dtype == np.int64 and submission["label"].between(0, 9).all()
    labels = ensemble_probs([tiny_run, other_run], table.images).argmax(1)
    assert list(submission["label"]) == list(labels)
    assert result.archived.name.startswith(f"ensemble-2-{tiny_run.name}-")
    assert result.archived.read_bytes() == out.read_bytes()
    assert result.runs == [tiny_run, other_run] and result.rows == len(table)
    # other_run's validation.npz is tiny_run's (copied): the same rows, so a figure on them applies
    assert result.val_acc == pytest.approx(checkpoint.Validation.load(tiny_run).accuracies()["val_acc"])
    tta = predict_run([tiny_run, other_run], table, out, tta=2)
    assert tta.archived.stem == f"{result.archived.stem}-tta2" and result.archived.exists()


def test_one_run_with_tta_keeps_its_archive_name_with_tta_appended(tiny_run: Path, real_data: dict,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    result = predict_run(tiny_run, read_test_csv(real_data["test"]), out, tta=2)
    val_acc = pd.read_csv(tiny_run / "summary.csv")["val_acc"].max()
    assert result.archived.name == f"{tiny_run.name}-val{val_acc:.4f}-tta2.csv"
    assert result.val_acc == pytest.approx(val_acc) and result.tta


def test_accuracy_of_several_runs_scores_their_mean_probabilities(tiny_run: Path, other_run: Path,
                                                                  real_data: dict) -> None:
    table = read_train_csv(real_data["labeled_test"])
    probs = ensemble_probs([tiny_run, other_run], table.images, tta=2)
    expected = float((probs.argmax(1) == table.labels).mean())
    assert accuracy_on([tiny_run, other_run], table, tta=2) == pytest.approx(expected)
    assert accuracy_on(tiny_run, table) == accuracy_on([tiny_run], table)


def test_shifted_images_keep_shape_values_and_fill_with_background() -> None:
    from competition.predict import shift_images

    images = np.random.default_rng(0).integers(1, 256, (3, 784), dtype=np.uint8)
    down = shift_images(images, 1, 1)
    assert down.shape == images.shape and down.dtype == np.uint8
    square, moved = images.reshape(3, 28, 28), down.reshape(3, 28, 28)
    assert (moved[:, 0, :] == 0).all() and (moved[:, :, 0] == 0).all()  # the new edge is background
    np.testing.assert_array_equal(moved[:, 1:, 1:], square[:, :-1, :-1])
    np.testing.assert_array_equal(shift_images(down, -1, -1).reshape(3, 28, 28)[:, :-1, :-1], square[:, :-1, :-1])


def test_six_view_tta_of_a_model_that_ignores_mirrors_and_shifts_is_its_plain_prediction() -> None:
    from competition.predict import probs_by_views, view_images

    rng = np.random.default_rng(1)
    square = np.zeros((5, 28, 28), np.uint8)
    square[:, 2:-2, 2:-2] = rng.integers(0, 256, (5, 24, 24))  # a background border, as in Fashion-MNIST
    images = square.reshape(5, 784)

    def by_brightness(x: np.ndarray) -> np.ndarray:
        """Probabilities from the total brightness alone: the same for mirrored and shifted images."""
        total = x.reshape(len(x), -1).sum(axis=1, dtype=np.float64)[:, None]
        logits = np.sin(total / 1000.0 * np.arange(1, 11))
        return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)

    views = view_images(images, 6)
    assert len(views) == 6 and views[0] is images and not np.array_equal(views[2], images)
    by = probs_by_views(by_brightness, images)
    for level in (2, 6):
        np.testing.assert_allclose(by[level], by[1], atol=1e-6)
        np.testing.assert_allclose(by[level].sum(axis=1), 1.0, atol=1e-5)


def test_six_view_tta_weighs_the_unmoved_pair_as_much_as_the_moved_views(tiny_run: Path,
                                                                        images: np.ndarray) -> None:
    from competition.predict import shift_images

    plain, mirrored = images, flip_images(images)
    moved = [shift_images(x, d, d) for d in (-1, 1) for x in (plain, mirrored)]
    expected = (0.25 * (run_probs(tiny_run, plain) + run_probs(tiny_run, mirrored))
                + 0.125 * sum(run_probs(tiny_run, x) for x in moved))
    np.testing.assert_allclose(run_probs(tiny_run, images, tta=6), expected, atol=1e-6)
    np.testing.assert_array_equal(run_probs(tiny_run, images, tta=6), run_probs(tiny_run, images, tta=6))


def test_six_view_submission_is_archived_as_such_with_its_validation_accuracy(tiny_run: Path, real_data: dict,
                                                                              tmp_path: Path) -> None:
    from competition.checkpoint import Validation

    result = predict_run(tiny_run, read_test_csv(real_data["test"]), tmp_path / "s.csv", tta=6)
    assert result.archived.name.endswith("-tta6.csv") and result.tta == 6
    assert result.val_acc_with_tta == Validation.load(tiny_run).accuracies()["val_acc_tta6"]


def test_an_ensembles_validation_accuracy_is_scored_on_the_rows_its_runs_share(
        tiny_run: Path, other_run: Path, tmp_path: Path) -> None:
    mine = checkpoint.Validation.load(tiny_run)
    rng = np.random.default_rng(0)
    other = tmp_path / "other"
    shutil.copytree(other_run, other)
    theirs = checkpoint.Validation(mine.indices, mine.images, mine.labels,
                                   *(rng.dirichlet(np.ones(10), len(mine.labels)).astype(np.float32) for _ in range(3)))
    theirs.save(other)
    plain, flip, rows = predict.shared_validation([tiny_run, other], tta=2)
    assert rows == len(mine.labels)
    log_sum = lambda name: np.log(getattr(mine, name)) + np.log(getattr(theirs, name))  # noqa: E731
    assert plain == pytest.approx((log_sum("probs").argmax(1) == mine.labels).mean())
    assert flip == pytest.approx((log_sum("tta2_probs").argmax(1) == mine.labels).mean())
    shifted = checkpoint.Validation(mine.indices + 1, mine.images, mine.labels, mine.probs, mine.tta2_probs)
    shifted.save(other)  # other rows: no figure applies
    assert predict.shared_validation([tiny_run, other], tta=2) is None
