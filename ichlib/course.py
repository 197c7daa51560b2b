"""The notebooks' setup: where the course keeps its data, figures and runs (independent of the
working directory), the phantom when no data is given, the smoke mode's sizes, a settings table,
and figures saved and shown once.

Every notebook opens with ``course = ichlib.course.setup(DATA_DIR, FIGURES_DIR, RUNS_DIR, SMOKE)``.
A notebook whose parameters set how much work it does passes them too, and reads them back
capped in smoke mode (see :data:`SMOKE_SIZES`)::

    course = ichlib.course.setup(DATA_DIR, FIGURES_DIR, RUNS_DIR, SMOKE, sizes={"IMG_SIZE": IMG_SIZE})
    IMG_SIZE = course.sizes["IMG_SIZE"]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ichlib.errors import ConfigError
from ichlib.io.folder import is_synthetic, read_dataset
from ichlib.io.tables import CtIchData
from ichlib.synthetic.rsna import write_synthetic_rsna
from ichlib.synthetic.writer import write_synthetic_ct_ich
from ichlib.viz.figures import SYNTHETIC_NOTE, save_figure


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


#: The smoke mode's ceiling for each size parameter of the notebooks: in smoke mode a size is
#: ``min(value, ceiling)``, and None (meaning "all") becomes the ceiling. One table for every
#: notebook, so a test's quick pass is the same wherever a name is used.
SMOKE_SIZES: dict[str, int] = {
    # 01-03: data exploration, windowing, sampling
    "N_HU_SCANS": 1, "MAX_PATIENTS": 4, "IMG_SIZE": 32,
    # 04: training
    "SEQ_LEN": 4, "SLICE_EPOCHS": 1, "E2E_EPOCHS": 1, "SHORTCUT_DEMO_SIZE": 32,
    "SHORTCUT_DEMO_EPOCHS": 1, "SEQUENCE_EPOCHS": 5, "HAND_BATCHES": 2, "N_BOOT": 50,
    # 05: Grad-CAM
    "CAM_VAL_PATIENTS": 2, "DELETION_PATIENTS": 3,
    # 06: RSNA DICOM
    "N_PATIENTS": 3, "SIZE": 64, "WARMUP_EPOCHS": 1, "EPOCHS": 1,
}


def smoke_sizes(sizes: Mapping[str, int | None], smoke: bool,
                limits: Mapping[str, int] | None = None) -> dict[str, int | None]:
    """``sizes`` as the notebook runs them: unchanged, or capped at :data:`SMOKE_SIZES` in smoke
    mode.

    Args:
        sizes: ``{parameter name: value}``; None means "all" (e.g. every patient).
        smoke: Whether this is the quick pass for tests.
        limits: Ceilings that replace or add to :data:`SMOKE_SIZES` for this call.

    Raises:
        ConfigError: In smoke mode, for a name with no ceiling (a size would stay full).
    """
    if not smoke:
        return dict(sizes)
    ceilings = {**SMOKE_SIZES, **(limits or {})}
    unknown = [name for name in sizes if name not in ceilings]
    if unknown:
        raise ConfigError(f"no smoke size for {', '.join(unknown)}: add it to "
                          "ichlib.course.SMOKE_SIZES or pass limits=")
    return {name: ceilings[name] if value is None else min(value, ceilings[name])
            for name, value in sizes.items()}


def settings_table(settings: Mapping[str, Any]) -> pd.DataFrame:
    """A notebook's settings as a short two-column table (setting, value) to display.

    Lists and tuples are joined with commas; everything is shown as text.
    """
    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    table = pd.DataFrame({"value": [text(v) for v in settings.values()]},
                         index=pd.Index(list(settings), name="setting"))
    return table


@dataclass(frozen=True)
class Course:
    """What a notebook needs after its parameters: folders, the data, and how to label it.

    Attributes:
        paths: The resolved folders (:class:`CoursePaths`).
        synthetic: Whether the data folder holds the synthetic phantom.
        note: The line every figure carries: SYNTHETIC, or what the real data is.
        smoke: The quick pass for tests.
        sizes: The size parameters passed to :func:`setup`, capped in smoke mode.
    """

    paths: CoursePaths
    synthetic: bool
    note: str
    smoke: bool = False
    sizes: dict[str, int | None] = field(default_factory=dict)

    def settings(self, settings: Mapping[str, Any]) -> pd.DataFrame:
        """:func:`settings_table` of ``settings``, with the data folder first and, in smoke
        mode, a last row saying the sizes are capped."""
        rows = {"data": f"{self.paths.data}" + (" (SYNTHETIC)" if self.synthetic else ""), **settings}
        if self.smoke:
            rows["smoke mode"] = "sizes capped: " + ", ".join(f"{k} {v}" for k, v in self.sizes.items())
        return settings_table(rows)

    def read(self, on_error: str = "raise") -> CtIchData:
        """The dataset folder's tables (CT-ICH or RSNA layout, see :func:`ichlib.io.read_dataset`)."""
        return read_dataset(self.paths.data, on_error=on_error)

    def save(self, fig: Figure, name: str) -> None:
        """Save ``fig`` as ``FIGURES_DIR/name.png``. Returns nothing, so a cell that ends with
        it shows the figure once (inline, from the open figure) and no path."""
        save_figure(fig, self.paths.figures, name)


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    return f"warning ({category.__name__}): {message}\n"


def readable_warnings() -> None:
    """Show warnings as one line, ``warning (Kind): message``, without the file, line number
    and source line Python adds (they mean nothing to a student). Each warning still shows once
    per place, as by default; ``warnings.simplefilter`` works as usual."""
    warnings.formatwarning = _one_line


def setup(data_dir: str | os.PathLike | None = None, figures_dir: str | os.PathLike | None = None,
          runs_dir: str | os.PathLike | None = None, smoke: bool = False,
          sizes: Mapping[str, int | None] | None = None) -> Course:
    """Resolve a notebook's folders, make the phantom if the default data folder has none.

    Args:
        data_dir: A dataset folder; None uses ``<repo>/data/synthetic``, generating the
            course phantom there if it is not complete (:func:`ensure_synthetic`).
        figures_dir, runs_dir: Output folders; None uses ``<repo>/figures`` and ``<repo>/runs``.
        smoke: The notebook's quick pass for tests.
        sizes: The notebook's size parameters by name; ``course.sizes`` gives them back,
            capped at :data:`SMOKE_SIZES` when ``smoke`` (:func:`smoke_sizes`).

    Warnings are shown as one line from here on (:func:`readable_warnings`).
    """
    sized = smoke_sizes(sizes or {}, bool(smoke))
    readable_warnings()
    paths = course_paths(data_dir, figures_dir, runs_dir)
    if data_dir is None:
        ensure_synthetic(paths.data)
    synthetic = is_synthetic(paths.data)
    note = SYNTHETIC_NOTE if synthetic else "real scans (research code, not a medical device)"
    return Course(paths=paths, synthetic=synthetic, note=note, smoke=bool(smoke), sizes=sized)


def setup_rsna(rsna_dir: str | os.PathLike | None = None, figures_dir: str | os.PathLike | None = None,
               runs_dir: str | os.PathLike | None = None, smoke: bool = False, n_patients: int = 6,
               size: int = 256, sizes: Mapping[str, int | None] | None = None) -> Course:
    """Like :func:`setup`, for a folder in the RSNA 2019 layout (notebook 06).

    Args:
        rsna_dir: An RSNA folder; None uses ``<runs>/synthetic_rsna``, writing a small
            synthetic RSNA phantom of ``n_patients`` at ``size`` there if it has none (in smoke
            mode both capped at :data:`SMOKE_SIZES`' ``N_PATIENTS`` and ``SIZE``). An existing
            phantom is used as it is, whatever its size.
        n_patients, size: The phantom's size, unless ``sizes`` has ``N_PATIENTS`` or ``SIZE``.
        figures_dir, runs_dir, smoke, sizes: As for :func:`setup`.
    """
    sized = smoke_sizes(sizes or {}, bool(smoke))
    phantom = smoke_sizes({"N_PATIENTS": n_patients, "SIZE": size}, bool(smoke))
    phantom.update({k: v for k, v in sized.items() if k in phantom})
    readable_warnings()
    paths = course_paths(None, figures_dir, runs_dir)
    data = Path(rsna_dir).resolve() if rsna_dir else paths.runs / "synthetic_rsna"
    if rsna_dir is None and not is_synthetic(data):
        write_synthetic_rsna(data, n_patients=phantom["N_PATIENTS"], size=phantom["SIZE"], seed=0)
    paths = CoursePaths(data, paths.figures, paths.runs)
    synthetic = is_synthetic(data)
    note = SYNTHETIC_NOTE if synthetic else "RSNA 2019 data (research code, not a medical device)"
    return Course(paths=paths, synthetic=synthetic, note=note, smoke=bool(smoke), sizes=sized)
