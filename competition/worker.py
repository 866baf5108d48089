"""One rank of a multi-process job, started by `paddle.distributed.launch … worker.py MODE …`.

    worker.py train RUN_DIR [--resume]
    worker.py bench OUT_JSON TRAIN_CSV ROWS SETTINGS_JSON

Run as a script by Paddle's launcher, so it imports the package absolutely.
"""
import json
import sys
from pathlib import Path

from competition.bench import BenchSettings, bench_worker
from competition.cli import setup_logging
from competition.data import read_train_csv
from competition.errors import CompetitionError
from competition.train import train_run


def main(argv: list[str]) -> int:
    """Run this process's rank of a training or a timing."""
    setup_logging()
    mode, args = argv[0], argv[1:]
    try:
        if mode == "train":
            train_run(Path(args[0]), resume="--resume" in args[1:])
        else:
            table = read_train_csv(Path(args[1])).head(int(args[2]))
            bench_worker(Path(args[0]), BenchSettings(**json.loads(args[3])), table.images, table.labels)
    except CompetitionError as exc:
        print(f"competition worker: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
