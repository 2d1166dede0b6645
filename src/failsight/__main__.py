"""``python -m failsight`` and the ``failsight`` console script: the command-line interface.

:func:`main` imports the CLI itself, so a Ctrl-C while the (heavy) imports run ends the program quietly
with exit status 130, like a Ctrl-C during a command, instead of printing a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the ``failsight`` command line."""
    try:
        from failsight.cli import app

        app(prog_name="failsight")
    except KeyboardInterrupt:
        try:
            sys.stderr.write("\nfailsight: interrupted.\n")
        finally:
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
