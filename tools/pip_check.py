"""``pip check``, except for the packages of requirements-nodeps.txt (installed without their declared
dependencies on purpose, see that file): any other broken requirement fails the install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def main() -> int:
    nodeps = {re.split(r"[=<>!~\s\[]", line.strip(), maxsplit=1)[0].lower()
              for line in Path(__file__).resolve().parents[1].joinpath("requirements-nodeps.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")}
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in out.stdout.splitlines()
                if line.strip() and line.split()[0].lower() not in nodeps and not line.startswith("No broken")]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
