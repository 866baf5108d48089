"""One rank of a multi-process job, started by parallel.launch (itself on one machine's CPU, through
`paddle.distributed.launch … worker.py MODE …` on GPUs and several machines).

    worker.py train RUN_DIR [--resume]
    worker.py bench OUT_JSON TRAIN_CSV ROWS SETTINGS_JSON
    worker.py probe OUT_PREFIX SHAPES_JSON     (--conv auto's and the planner's timings, probe.py)

Run as a script, so it imports the package absolutely. Each rank stops
(exit 130) on SIGINT, SIGTERM or SIGHUP, or when `competition train` that launched it is gone,
and leaves its exit status in the log folder for the launching process.
"""
import json
import sys
from pathlib import Path

from competition import parallel
from competition.bench import BenchSettings, bench_worker
from competition.logs import setup_logging
from competition.data import read_train_csv
from competition.errors import CompetitionError
from competition.probe import probe_worker, shape_of
from competition.train import train_run


def main(argv: list[str]) -> int:
    """Run this process's rank of a training or a timing."""
    setup_logging()
    parallel.watch_parent()
    mode, args = argv[0], argv[1:]
    code, message = 0, ""
    try:
        with parallel.stop_signals_interrupt():
            if mode == "train":
                train_run(Path(args[0]), resume="--resume" in args[1:])
            elif mode == "probe":
                probe_worker(Path(args[0]), [shape_of(values) for values in json.loads(args[1])])
            else:
                table = read_train_csv(Path(args[1])).head(int(args[2]))
                bench_worker(Path(args[0]), BenchSettings(**json.loads(args[3])), table.images, table.labels)
    except CompetitionError as exc:
        code, message = getattr(exc, "exit_code", 2), str(exc)
        print(f"competition worker: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        code, message = parallel.INTERRUPTED, "interrupted"
    except Exception as exc:  # a crash: say which rank it was before the traceback
        parallel.write_exit(parallel.world()[0], 1, f"{type(exc).__name__}: {exc}")
        raise
    parallel.write_exit(parallel.world()[0], code, message)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
