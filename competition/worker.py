"""One rank of a multi-process run: `paddle.distributed.launch … worker.py RUN_DIR [--resume]`.

Run as a script by Paddle's launcher, so it imports the package absolutely.
"""
import sys

from competition.cli import setup_logging
from competition.errors import CompetitionError
from competition.train import train_run


def main(argv: list[str]) -> int:
    """Train the run folder's configuration as this process's rank."""
    run_dir, resume = argv[0], "--resume" in argv[1:]
    setup_logging()
    try:
        train_run(run_dir, resume=resume)
    except CompetitionError as exc:
        print(f"competition worker: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
