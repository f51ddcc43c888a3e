"""``python -m engine`` and the ``llamanp`` console script: the command line.

Nothing heavy is imported before the ``try``, so Ctrl-C while NumPy and the kernels
load ends as Ctrl-C anywhere else does: one line and exit status 130.
"""
import sys


def run() -> None:
    try:
        from .cli import main
        main()
    except KeyboardInterrupt:
        print("llamanp: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run()
