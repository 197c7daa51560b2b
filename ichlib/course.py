"""Where the course keeps its data, figures and runs, independent of the working directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ichlib.io.folder import is_synthetic
from ichlib.synthetic.phantom import write_synthetic_ct_ich


def repo_root() -> Path:
    """The checkout that holds the ``ichlib`` package (editable installs), else the cwd."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


@dataclass(frozen=True)
class CoursePaths:
    """Resolved folders for one notebook run.

    Attributes:
        data: The dataset folder (CT-ICH layout).
        figures: Where figures are saved.
        runs: Where checkpoints, caches and executed outputs go.
    """

    data: Path
    figures: Path
    runs: Path

    @property
    def cache(self) -> Path:
        """Preprocessing cache under ``runs``."""
        return self.runs / "cache"


def course_paths(data_dir: str | os.PathLike | None = None,
                 figures_dir: str | os.PathLike | None = None,
                 runs_dir: str | os.PathLike | None = None) -> CoursePaths:
    """Resolve the notebook parameters to absolute folders (None = the course default).

    Defaults: ``<repo>/data/synthetic``, ``<repo>/figures``, ``<repo>/runs``. Figure and
    run folders are created.
    """
    root = repo_root()
    data = Path(data_dir) if data_dir else root / "data" / "synthetic"
    figures = Path(figures_dir) if figures_dir else root / "figures"
    runs = Path(runs_dir) if runs_dir else root / "runs"
    figures.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    return CoursePaths(data.resolve(), figures.resolve(), runs.resolve())




#: Patients in the course's synthetic phantom (``make run`` and the notebooks' default data).
#: CT-ICH itself has 75; from-scratch training of the CNN needs more scans than that to beat
#: the intensity baseline within the CPU budget, and a test split of 30 patients gives
#: narrower intervals than one of 12.
COURSE_PATIENTS = 200


def ensure_synthetic(data_dir: str | os.PathLike, n_patients: int = COURSE_PATIENTS, size: int = 512,
                     seed: int = 0) -> Path:
    """Generate the phantom into ``data_dir`` unless a complete one is already there.

    The generator writes ``synthetic.json`` last, so a folder without it (an interrupted
    generation) is written again. Call this only for the course's own synthetic folder.
    """
    data_dir = Path(data_dir)
    if is_synthetic(data_dir):
        return data_dir
    return write_synthetic_ct_ich(data_dir, n_patients=n_patients, size=size, seed=seed)
