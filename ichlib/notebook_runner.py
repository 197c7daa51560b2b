"""Run a course notebook headless with papermill, and show on the terminal that it is alive.

``make run`` executes each notebook through papermill's ``ichlib`` engine (registered in
``pyproject.toml``): the standard nbclient engine, which also prints a line to the terminal
as each code cell starts, with the time elapsed and the cell's first line. Nothing of it goes
into the executed notebook, and no progress bar is drawn (``TQDM_DISABLE`` keeps the bars of
the notebooks' own code out of their saved outputs).

:data:`EXPECTED_MINUTES` is what each notebook took in a fresh clone's ``make run`` on a
2-core CPU; ``make run`` prints it before the notebook starts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from papermill.engines import NBClientEngine

#: Minutes each notebook took in a fresh clone's ``make run`` (2026-12-07, 2-core AMD EPYC
#: without AVX512-BF16 or AMX, float32, nothing else running: 33, 24, 18, 919, 346 and 52 s).
EXPECTED_MINUTES: dict[str, float] = {"01": 0.6, "02": 0.4, "03": 0.3, "04": 14.0, "05": 4.6, "06": 0.7}


def expected_line(notebook: str | Path) -> str:
    """``"expected: about 17 min on a 2-core CPU"`` for a notebook's file name, or ``""``."""
    minutes = EXPECTED_MINUTES.get(Path(notebook).name[:2])
    if minutes is None:
        return ""
    amount = f"about {minutes:g} min" if minutes >= 1 else "under a minute"
    return f"expected: {amount} on a 2-core CPU (less with native bf16 or a GPU)"


class ProgressEngine(NBClientEngine):
    """papermill's nbclient engine, printing ``[mm:ss] cell k/n: <first line>`` per code cell."""

    stream: TextIO | None = None  # None: sys.stderr at the time of the call

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        """Run the notebook as nbclient does, announcing each code cell as it starts."""
        code = [c for c in nb_man.nb.cells if c.get("cell_type") == "code"]
        start = time.monotonic()
        announce = cls.stream or sys.stderr
        original = nb_man.cell_start

        def cell_start(cell, cell_index=None, **kw):
            if cell.get("cell_type") == "code":
                number = next((k for k, c in enumerate(code, 1) if c is cell), 0)
                elapsed = int(time.monotonic() - start)
                first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
                print(f"   [{elapsed // 60:02d}:{elapsed % 60:02d}] cell {number}/{len(code)}: "
                      f"{first[:70]}", file=announce, flush=True)
            return original(cell, cell_index, **kw)

        nb_man.cell_start = cell_start
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """``python -m ichlib.notebook_runner expected NOTEBOOK``: print the expected-time line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "expected":
        print(expected_line(args[1]))
        return 0
    print("usage: python -m ichlib.notebook_runner expected NOTEBOOK", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
