"""``python -m failsight``: the command-line interface."""

from failsight.cli import app

if __name__ == "__main__":
    app(prog_name="failsight")
