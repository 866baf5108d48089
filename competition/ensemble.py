"""Ensemble presets (competition train --preset best): one run per member preset, in one folder, whose
probabilities predict averages.

An ensemble folder runs/<time>-ensemble-<preset>/ holds ensemble.json (the members' configurations; each
finished member's figures; "figures" once all have finished) and member1 … memberM (run folders). This
module is the one writer of ensemble.json.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import api, checkpoint, folders, predict
from .folders import ENSEMBLE_JSON
from .config import ENSEMBLES, Config, from_preset
from .errors import CompetitionError
from .stats import VIEWS, views_key
from .train import RunResult, run_result

log = logging.getLogger("competition")


@dataclass
class EnsembleResult:
    """What a finished ensemble produced: its members' results and the average's validation figures."""

    ens_dir: Path
    members: list[RunResult]
    # the average on the validation rows the members share: acc, acc_tta, acc_tta6, rows (None without a split)
    figures: Optional[dict[str, Any]]


def start_ensemble(preset: str, options: dict[str, Any], configs: Optional[list[Config]] = None) -> Path:
    """Check every member's configuration (its preset with `options` on top, or `configs`: a plan's) and create the
    ensemble folder."""
    configs = configs or [from_preset(member, **options) for member in ENSEMBLES[preset]]
    if configs[0].nnodes > 1:
        raise CompetitionError(f"preset {preset} trains on one machine; drop --nnodes (each member uses every core).")
    configs = [api.prepare(config)[0] for config in configs]  # bad options, data or runtime fail here, first
    ens_dir = folders.create(configs[0].runs_dir, f"ensemble-{preset}")
    _write_record(ens_dir, {"preset": preset, "members": [c.to_dict() for c in configs], "finished": {}})
    log.info("ensemble %s of %s in %s", preset, " and ".join(str(c.preset) for c in configs), ens_dir)
    return ens_dir


def run_ensemble(ens_dir: Path) -> EnsembleResult:
    """Train every unfinished member in turn (resuming one that was stopped), then score their average.

    A stop saves the member's finished epochs; run_ensemble on the same folder continues from there, skipping
    finished members, and ends with the same result as an unstopped ensemble.
    """
    ens_dir = Path(ens_dir)
    record = folders.read_ensemble_record(ens_dir)
    configs = [Config.from_dict(values) for values in record["members"]]
    run_dirs = [folders.member_dir(ens_dir, k) for k in range(1, len(configs) + 1)]
    for k, (config, run_dir) in enumerate(zip(configs, run_dirs), start=1):
        if run_dir.name in record["finished"]:
            continue
        log.info("ensemble %s: member %d of %d (%s)", ens_dir.name, k, len(configs), config.preset)
        config.extra = {**config.extra, "ensemble": ens_dir.name}
        result = api.train_to_end(run_dir, config, f"ensemble member {k} of {len(configs)} ({config.preset})",
                                  f"continue the ensemble with: competition train --resume {ens_dir}")
        record["finished"][run_dir.name] = {"preset": config.preset, "best_val_acc": result.best_val_acc}
        _write_record(ens_dir, record)
    figures = _figures(run_dirs)
    _write_record(ens_dir, {**record, "figures": figures})
    return EnsembleResult(ens_dir, [run_result(run_dir) for run_dir in run_dirs], figures if figures.get("rows") else None)


def _figures(run_dirs: list[Path]) -> dict[str, Any]:
    """The average's accuracy on the members' shared validation rows: plain, flip and six views."""
    figures: dict[str, Any] = {}
    for views in VIEWS[1:]:
        shared = predict.shared_validation(run_dirs, views)
        if shared is None:
            return figures  # no validation split (or members that validated on other rows)
        figures["acc"], figures[views_key("acc", views)], figures["rows"] = shared
    return figures


def _write_record(ens_dir: Path, record: dict[str, Any]) -> None:
    with checkpoint.atomic_path(Path(ens_dir) / ENSEMBLE_JSON) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
