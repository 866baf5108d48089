"""`python -m competition` and the `competition` console script."""
import signal

# parallel.STOP_SIGNALS, named here so that nothing heavy is imported before they are held
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main() -> int:
    """Hold stop signals while Paddle imports (its own handler prints a 12-line C++ banner), then let the
    command line answer them in one line (cli.main releases them)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    from .cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
