"""`maskserve` and `python -m maskserve`: the command line, which runs the service and so needs the
`server` extra; a client-only install (`pip install maskserve`) gets one line saying so, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from maskserve.cli import app
    except ModuleNotFoundError as exc:
        sys.exit(f"error: the maskserve command runs the service and needs its packages ({exc.name} is not "
                 f"installed): pip install 'maskserve[server]'")
    app()


if __name__ == "__main__":
    main()
