"""The RSNA 2019 Intracranial Hemorrhage Detection layout: labels, DICOM series and checks.

Layout (Kaggle, stage 2)::

    ROOT/stage_2_train.csv       ID,Label  - six rows per image: ID_<image>_<label>
    ROOT/stage_2_train/ID_*.dcm  one flat folder: every image of every series

An image id (``ID_63eb1e259``) is the file's ``SOPInstanceUID`` (its file stem is used when
the two differ and only the stem has labels). Images are grouped into series by
``SeriesInstanceUID``; the series is ichlib's *scan*, so :func:`read_rsna` returns the same
:class:`~ichlib.io.tables.CtIchData` container as CT-ICH (its :class:`RsnaData` subclass), with
``patients`` indexed by series UID and the DICOM ``PatientID`` in ``patient_id_dicom``.
Split with :func:`rsna_group_split` so that all series of one person stay in one part.

Slices of a series are ordered by :func:`ichlib.io.dicom.ordering.order_slices`, the same function the
loader uses, and ``slice_labels(series)`` follows that order. ``scans[series]`` is a
``.series`` manifest (under the cache folder) listing the series' files in that order;
:func:`ichlib.io.dicom.series.load_dicom_series` loads it.

Headers are read with ``stop_before_pixels`` and cached in a CSV keyed by each file's name,
size and modification time, so a second read opens no DICOM file. There are no masks.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ichlib.errors import DataError
from ichlib.io.atomic import atomic_open
from ichlib.io.cachedir import default_cache_dir
from ichlib.io.dicom.headers import (
    RECORD_FIELDS,
    SliceHeader,
    check_slice_header,
    read_slice_header,
)
from ichlib.io.dicom.ordering import MAX_GAP_RATIO, SeriesLayout, order_slices
from ichlib.io.dicom.series import write_series_manifest
from ichlib.io.files import MAX_TABLE_BYTES, regular_file
from ichlib.io.tables import (
    CtIchData,
    Problem,
    dataset_root,
    problem_listing,
    refuse_duplicate_columns,
)
from ichlib.labels import LABELS, SUBTYPES

#: Label tables recognised in a dataset folder, first match wins.
RSNA_LABEL_CSVS: tuple[str, ...] = ("stage_2_train.csv", "stage_1_train.csv")
#: Image folders recognised beside the label table, first match wins.
RSNA_IMAGE_DIRS: tuple[str, ...] = ("stage_2_train", "stage_2_train_images",
                                    "stage_1_train", "stage_1_train_images")
#: The order of an image's six rows in the RSNA CSV. Rows are read by name, not by position.
RSNA_LABEL_ORDER: tuple[str, ...] = ("epidural", "intraparenchymal", "intraventricular",
                                     "subarachnoid", "subdural", "any")
#: Unlabelled (test) image folders, looked for before :data:`RSNA_IMAGE_DIRS` by
#: :func:`find_rsna_image_dir`.
RSNA_TEST_IMAGE_DIRS: tuple[str, ...] = ("stage_2_test", "stage_2_test_images",
                                         "stage_1_test", "stage_1_test_images")
#: Version of the header cache format; a cache of another version is rebuilt.
HEADER_CACHE_VERSION = 2
#: Below this many files to read, headers are read in this process.
_PARALLEL_MIN_FILES = 2000


class DuplicateLabelWarning(UserWarning):
    """The RSNA label table repeats rows; the repeats were dropped."""


@dataclass
class RsnaData(CtIchData):
    """A validated RSNA folder, in the :class:`~ichlib.io.tables.CtIchData` shape.

    Tables are keyed by series: ``slices["patient_id"]`` and ``patients.index`` hold the
    ``SeriesInstanceUID``. Extra columns: ``slices`` has ``image_id`` and ``position``
    (mm along the slice normal); ``patients`` has ``patient_id_dicom`` (DICOM PatientID)
    and ``study_uid``. ``masks`` maps every series to None.

    Attributes:
        image_dir: The folder of DICOM files.
        cache_dir: Where the header cache and the ``.series`` manifests live.
    """

    image_dir: Path | None = None
    cache_dir: Path | None = None
    _label_index: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def slice_labels(self, patient_id: str) -> np.ndarray:
        """Slice labels ``[n_slices, 6]`` (float32) of a series, in volume slice order."""
        index = self._label_index
        if index.get("slices") is not self.slices:  # rebuilt whenever .slices is replaced
            index.clear()
            index["slices"] = self.slices
            index["values"] = self.slices[list(LABELS)].to_numpy(dtype=np.float32)
            index["rows"] = self.slices.groupby("patient_id", sort=False).indices
        rows = index["rows"].get(patient_id)
        if rows is None:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        return index["values"][rows]


def read_rsna_labels(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, str], list[Problem]]:
    """Read ``stage_2_train.csv`` into one row per image.

    Exact duplicate rows are dropped with a :class:`DuplicateLabelWarning`. An image with
    conflicting rows, a value other than 0/1, a missing label, or ``any`` that is not the
    OR of the subtypes is *bad*: it keeps no labels, and the series holding it is dropped
    by :func:`read_rsna`.

    Returns:
        ``(labels, bad, problems)``: ``labels`` indexed by image id with the six
        :data:`~ichlib.labels.LABELS` as 0/1 ints (good images only); ``bad`` maps each bad
        image id to the reason; ``problems`` are faults of the table itself.

    Raises:
        DataError: If the file is missing, empty, names a column twice, or lacks the ``ID``
            or ``Label`` column.
    """
    path = Path(csv_path)
    regular_file(path, "label CSV", MAX_TABLE_BYTES)
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                          skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(path, "label CSV is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(path, f"not a readable CSV ({exc})") from exc
    refuse_duplicate_columns(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in ("ID", "Label") if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}")
    if raw.empty:
        raise DataError(path, "label CSV has a header but no rows")
    table = pd.DataFrame({"ID": raw["ID"].str.strip(), "Label": raw["Label"].str.strip(),
                          "row": np.arange(len(raw)) + 2})

    problems: list[Problem] = []
    dup = table.duplicated(["ID", "Label"], keep="first")
    if dup.any():
        ids = table.loc[dup, "ID"].str.rpartition("_")[0].unique()
        warnings.warn(f"{path}: dropped {int(dup.sum())} duplicate row(s) of {len(ids)} image(s) "
                      f"(e.g. {', '.join(ids[:5])})", DuplicateLabelWarning, stacklevel=2)
        table = table[~dup]

    parts = table["ID"].str.rpartition("_")
    table = table.assign(image_id=parts[0], label=parts[2])
    unknown = ~table["label"].isin(RSNA_LABEL_ORDER) | (table["image_id"] == "")
    if unknown.any():
        examples = table.loc[unknown, "ID"].unique()
        problems.append(Problem(str(path), f"{int(unknown.sum())} row(s) whose ID is not "
                                f"<image>_<label> with a label in {', '.join(RSNA_LABEL_ORDER)} "
                                f"(e.g. row {int(table.loc[unknown, 'row'].iloc[0])}: "
                                f"{examples[0]!r}); rows ignored"))
        table = table[~unknown]

    bad: dict[str, str] = {}
    value = pd.to_numeric(table["Label"], errors="coerce")
    invalid = ~value.isin([0, 1])
    for _, r in table[invalid].iterrows():
        bad.setdefault(r["image_id"], f"row {r['row']}: {r['label']} = {r['Label']!r}, expected 0 or 1")
    conflict = table.duplicated(["image_id", "label"], keep=False) & ~invalid
    for image_id, rows in table[conflict].groupby("image_id")["row"]:
        bad.setdefault(image_id, f"conflicting rows {', '.join(map(str, rows))} for the same label")

    table = table.assign(value=value.fillna(0).astype(int))
    wide = table.pivot_table(index="image_id", columns="label", values="value", aggfunc="max")
    wide = wide.reindex(columns=list(RSNA_LABEL_ORDER))
    for image_id in wide.index[wide.isna().any(axis=1)]:
        absent = [c for c in RSNA_LABEL_ORDER if pd.isna(wide.at[image_id, c])]
        bad.setdefault(image_id, f"no row for label(s) {', '.join(absent)}")
    wide = wide.fillna(0).astype(int)
    contradiction = wide["any"] != wide[list(SUBTYPES)].max(axis=1)
    for image_id in wide.index[contradiction]:
        what = "but no subtype is 1" if wide.at[image_id, "any"] else "but a subtype is 1"
        bad.setdefault(image_id, f"any = {wide.at[image_id, 'any']} {what}")
    labels = wide.loc[~wide.index.isin(list(bad)), list(LABELS)]
    labels.index.name = "image_id"
    return labels, bad, problems


def _read_rsna_headers(image_dir: str | os.PathLike, cache_dir: str | os.PathLike,
                      workers: int | None = None) -> tuple[list[SliceHeader], list[Problem]]:
    """The header of every ``*.dcm`` file in ``image_dir``, through a cache.

    The cache (``cache_dir/headers-<hash of the folder>.csv``, written atomically) holds
    one row per file, keyed by file name, size and modification time; only new or changed
    files are opened. Unreadable files are cached too, with their error.

    Args:
        image_dir: The flat folder of DICOM files.
        cache_dir: Folder for the cache.
        workers: Processes for reading headers (default: all cores when at least 2000
            files need reading, else this process).

    Returns:
        ``(headers, problems)``: one header per readable file, and one problem per file
        that is not a readable DICOM image.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(image_dir, "image folder not found" if not image_dir.exists() else "not a folder")
    files = _list_dicom_files(image_dir)
    cache_path = Path(cache_dir) / f"headers-{_digest(image_dir.resolve())}.csv"
    cached = _load_header_cache(cache_path)
    records, to_read = [], []
    for name, size, mtime in files:
        rec = cached.get(name)
        if rec is not None and rec["size"] == str(size) and rec["mtime_ns"] == str(mtime):
            records.append(rec)
        else:
            to_read.append((name, size, mtime))
    if to_read:
        records += _read_records(image_dir, to_read, workers)
    if to_read or len(cached) != len(files):
        _save_header_cache(cache_path, records)

    headers, problems = [], []
    for rec in sorted(records, key=lambda r: r["file"]):
        if rec["error"]:
            problems.append(Problem(str(image_dir / rec["file"]), rec["error"]))
        else:
            headers.append(SliceHeader.from_record(rec, image_dir))
    return headers, problems


def read_rsna(root: str | os.PathLike, on_error: str = "raise", cache_dir: str | os.PathLike | None = None,
              image_dir: str | os.PathLike | None = None, workers: int | None = None,
              max_gap_ratio: float | None = MAX_GAP_RATIO) -> RsnaData:
    """Read and validate an RSNA 2019 folder into series-level tables.

    Per series: slices are ordered along the normal and checked (one size, orientation and
    pixel spacing, no duplicate positions, no gap wider than ``max_gap_ratio`` median
    spacings, pixel data present, not truncated, decodable); every image must have its six
    good labels; the series must have one PatientID and one StudyInstanceUID. A series
    failing any check is a problem and is left out. Labels of images with no file, and
    ``.dcm`` files that are not readable DICOM images, are problems too.

    Args:
        root: The dataset folder.
        on_error: ``"raise"`` to raise on any problem (listing them), or ``"skip"`` to drop
            the affected series and keep the problems in ``.problems``.
        cache_dir: Folder for the header cache and manifests (default:
            ``$ICHLIB_CACHE/rsna/<hash of root>`` or ``~/.cache/ichlib/rsna/...``).
        image_dir: The DICOM folder (default: the first of :data:`RSNA_IMAGE_DIRS` found).
        workers: Processes for reading uncached headers (see :func:`_read_rsna_headers`).
        max_gap_ratio: Largest gap allowed, in median spacings; None allows any.

    Raises:
        DataError: If the folder cannot be used at all, or ``on_error="raise"`` and a
            problem was found.
    """
    root = dataset_root(root, on_error)
    csv_path = next((root / n for n in RSNA_LABEL_CSVS if (root / n).is_file()), root / RSNA_LABEL_CSVS[0])
    image_dir = Path(image_dir) if image_dir is not None else _find_image_dir(root)
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_rsna_cache_dir(root)

    labels, bad, problems = read_rsna_labels(csv_path)
    headers, header_problems = _read_rsna_headers(image_dir, cache_dir, workers)
    problems += header_problems

    label_ids = set(labels.index) | set(bad)
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid].append(h)

    columns, blocks, info, scans, seen_ids = _read_all_series(
        by_series, labels, bad, image_dir, cache_dir, max_gap_ratio, problems)
    seen_ids |= {Path(p.path).stem for p in header_problems}  # unreadable, but present
    orphans = sorted(label_ids - seen_ids)
    if orphans:
        problems.append(Problem(str(csv_path), f"{len(orphans)} labelled image(s) have no DICOM file "
                                f"in {image_dir} (e.g. {', '.join(orphans[:5])})"))

    if problems and on_error == "raise":
        raise DataError(root, problem_listing(problems))

    slices = _slice_frame(columns, blocks)
    patients = _series_table(slices, info)
    return RsnaData(root=root, slices=slices, patients=patients,
                    scans={uid: scans[uid] for uid in patients.index},
                    masks={uid: None for uid in patients.index}, problems=problems,
                    image_dir=image_dir, cache_dir=cache_dir)


@dataclass(frozen=True)
class RsnaImages:
    """Every ``*.dcm`` image of one RSNA image folder, grouped into series, without labels.

    Attributes:
        image_dir: The folder.
        series: Per ``SeriesInstanceUID`` (sorted), its slices in volume order: the order
            :func:`~ichlib.io.dicom.series.load_dicom_series` stacks them in.
        unusable: Per image id (:func:`rsna_image_id`; the file stem for an unreadable
            file) that cannot be predicted, the problem: an unreadable file, or a member of
            a series that fails a check (then the problem names the series).
    """

    image_dir: Path
    series: dict[str, SeriesLayout]
    unusable: dict[str, Problem]


def rsna_image_id(header: SliceHeader) -> str:
    """An image's id: its ``SOPInstanceUID`` (RSNA: ``ID_63eb1e259``), or the file's stem
    when the header has none."""
    return header.sop_uid or header.path.stem


def find_rsna_image_dir(path: str | os.PathLike) -> Path:
    """The DICOM folder of ``path``: ``path`` itself when it holds ``*.dcm`` files, else the
    first of :data:`RSNA_TEST_IMAGE_DIRS` and then :data:`RSNA_IMAGE_DIRS` inside it.

    Raises:
        DataError: If ``path`` is not a folder or has no such folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "folder not found" if not path.exists() else "not a folder")
    with os.scandir(path) as it:
        if any(e.name.lower().endswith(".dcm") and not e.name.startswith(".") for e in it):
            return path
    for name in (*RSNA_TEST_IMAGE_DIRS, *RSNA_IMAGE_DIRS):
        if (path / name).is_dir():
            return path / name
    raise DataError(path, "holds no *.dcm file and none of the RSNA image folders "
                          f"({', '.join((*RSNA_TEST_IMAGE_DIRS, *RSNA_IMAGE_DIRS))})")


def read_rsna_images(image_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                     workers: int | None = None,
                     max_gap_ratio: float | None = MAX_GAP_RATIO) -> RsnaImages:
    """Group an RSNA image folder (e.g. ``stage_2_test``) into ordered series; no labels needed.

    Headers go through the same cache as :func:`read_rsna`, and each series gets the same
    checks (one size, orientation and spacing, no duplicate position, no wide gap,
    decodable pixel data). A series that fails them, and a file that is not a readable
    DICOM image, are recorded per image in :attr:`RsnaImages.unusable`; the other series
    are kept.

    Args:
        image_dir: The flat folder of ``*.dcm`` files.
        cache_dir: Folder for the header cache (default: ``<cache>/rsna/<hash of image_dir>``).
        workers: Processes for reading uncached headers.
        max_gap_ratio: Largest gap allowed, in median spacings; None allows any.

    Raises:
        DataError: If ``image_dir`` is not a folder.
    """
    image_dir = Path(image_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_rsna_cache_dir(image_dir)
    headers, problems = _read_rsna_headers(image_dir, cache_dir, workers)
    unusable = {Path(p.path).stem: p for p in problems}
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid].append(h)
    series: dict[str, SeriesLayout] = {}
    for uid in sorted(by_series):
        where = f"{image_dir} (series {uid})"
        try:
            series[uid] = _checked_layout(by_series[uid], where, max_gap_ratio)
        except DataError as exc:
            problem = Problem(exc.path or where, exc.problem, uid)
            unusable.update({rsna_image_id(h): problem for h in by_series[uid]})
    return RsnaImages(image_dir=image_dir, series=series, unusable=unusable)


def _read_all_series(by_series: dict[str, list[SliceHeader]], labels: pd.DataFrame, bad: dict[str, str],
                     image_dir: Path, cache_dir: Path, max_gap_ratio: float | None,
                     problems: list[Problem]) -> tuple[dict[str, list], list[np.ndarray], dict, dict, set[str]]:
    """Order, check and label every series; a failing series becomes a problem (appended).

    Returns:
        The slice-table columns, the label blocks, per-series info, the manifests, and the
        image ids seen.
    """
    label_ids = set(labels.index) | set(bad)
    label_values = labels[list(LABELS)].to_numpy(dtype=np.int64)
    columns: dict[str, list] = {"patient_id": [], "slice_number": [], "image_id": [], "position": []}
    blocks: list[np.ndarray] = []
    info: dict[str, dict] = {}
    scans: dict[str, Path] = {}
    seen_ids: set[str] = set()
    for uid in sorted(by_series):
        where = f"{image_dir} (series {uid})"
        group = by_series[uid]
        seen_ids.update(_image_id(h, label_ids) for h in group)
        try:
            layout = _checked_layout(group, where, max_gap_ratio)
        except DataError as exc:
            problems.append(Problem(exc.path or where, exc.problem, uid))
            continue
        ordered_ids = [_image_id(h, label_ids) for h in layout.headers]
        problem = _series_label_problem(ordered_ids, labels.index, bad, layout.headers)
        if problem is None:
            problem = _series_identity_problem(layout.headers)
        if problem is not None:
            problems.append(Problem(where, problem, uid))
            continue
        n = len(ordered_ids)
        blocks.append(label_values[labels.index.get_indexer(ordered_ids)])
        columns["patient_id"] += [uid] * n
        columns["slice_number"] += range(1, n + 1)
        columns["image_id"] += ordered_ids
        columns["position"] += layout.positions.tolist()
        info[uid] = {"n_slices": n, "patient_id_dicom": layout.headers[0].patient_id,
                     "study_uid": layout.headers[0].study_uid}
        scans[uid] = write_series_manifest(cache_dir / "series" / f"{_safe_name(uid)}.series",
                                           [h.path for h in layout.headers], uid)

    return columns, blocks, info, scans, seen_ids


def _checked_layout(group: list[SliceHeader], where: str, max_gap_ratio: float | None) -> SeriesLayout:
    """The series' slices in volume order, each checked to be decodable (DataError if not)."""
    layout = order_slices(group, where, max_gap_ratio)
    for h in layout.headers:
        check_slice_header(h)
    return layout


def _slice_frame(columns: dict[str, list], blocks: list[np.ndarray]) -> pd.DataFrame:
    """The slice table from the per-series columns and label blocks."""
    values = np.concatenate(blocks) if blocks else np.zeros((0, len(LABELS)), dtype=np.int64)
    return pd.DataFrame({"patient_id": pd.Series(columns["patient_id"], dtype=object),
                         "slice_number": np.asarray(columns["slice_number"], dtype=np.int64),
                         **{lab: values[:, i] for i, lab in enumerate(LABELS)},
                         "image_id": pd.Series(columns["image_id"], dtype=object),
                         "position": np.asarray(columns["position"], dtype=np.float64)})


def _default_rsna_cache_dir(root: str | os.PathLike) -> Path:
    """``<cache>/rsna/<hash of root>`` under :func:`~ichlib.io.cachedir.default_cache_dir`."""
    return default_cache_dir() / "rsna" / _digest(Path(root).resolve())


# --- internals -------------------------------------------------------------------------

_CACHE_COLUMNS = ("version", "size", "mtime_ns", "error", *RECORD_FIELDS)


def _find_image_dir(root: Path) -> Path:
    for name in RSNA_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataError(root, f"no DICOM folder; expected one of {', '.join(RSNA_IMAGE_DIRS)}")


def _list_dicom_files(image_dir: Path) -> list[tuple[str, int, int]]:
    found = []
    with os.scandir(image_dir) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.name.lower().endswith(".dcm"):
                continue
            if entry.is_file():
                st = entry.stat()
                found.append((entry.name, st.st_size, st.st_mtime_ns))
    return sorted(found)


def _header_record(task: tuple[str, str, int, int]) -> dict[str, str]:
    """Read one file's header into a cache row (module level so a process pool can run it)."""
    root, name, size, mtime = task
    rec = {"version": str(HEADER_CACHE_VERSION), "size": str(size), "mtime_ns": str(mtime),
           "error": "", **dict.fromkeys(RECORD_FIELDS, "")}
    rec["file"] = name
    try:
        header = read_slice_header(Path(root) / name)
    except DataError as exc:
        rec["error"] = exc.problem
        return rec
    rec.update(header.to_record(Path(root)))
    return rec


def _read_records(image_dir: Path, files: list[tuple[str, int, int]], workers: int | None) -> list[dict]:
    tasks = [(str(image_dir), name, size, mtime) for name, size, mtime in files]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(tasks) >= _PARALLEL_MIN_FILES else 1
    workers = max(1, min(int(workers), len(tasks)))
    if workers == 1:
        return [_header_record(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_header_record, tasks, chunksize=256))


def _load_header_cache(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != _CACHE_COLUMNS:
                return {}  # another format: rebuild
            version = str(HEADER_CACHE_VERSION)
            records = (dict(zip(_CACHE_COLUMNS, row)) for row in reader
                       if len(row) == len(_CACHE_COLUMNS) and row[0] == version)
            return {rec["file"]: rec for rec in records}
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}  # unreadable cache: rebuild it


def _save_header_cache(path: Path, records: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_CACHE_COLUMNS)
        for rec in sorted(records, key=lambda r: r["file"]):
            writer.writerow([rec[c] for c in _CACHE_COLUMNS])


def _image_id(header: SliceHeader, label_ids: set[str]) -> str:
    if header.sop_uid in label_ids or not header.sop_uid:
        return header.sop_uid or header.path.stem
    stem = header.path.stem
    return stem if stem in label_ids else header.sop_uid


def _series_label_problem(ids: list[str], labelled: pd.Index, bad: dict[str, str],
                          headers) -> str | None:
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        return f"image id(s) repeated within the series: {', '.join(dup[:5])}"
    broken = [i for i in ids if i in bad]
    if broken:
        return (f"{len(broken)} image(s) with bad labels, e.g. {broken[0]}: {bad[broken[0]]}")
    unlabelled = [h.path.name for i, h in zip(ids, headers) if i not in labelled]
    if unlabelled:
        return (f"{len(unlabelled)} of {len(ids)} image(s) have no labels in the CSV "
                f"(e.g. {', '.join(unlabelled[:5])})")
    return None


def _series_identity_problem(headers) -> str | None:
    for attr, name in (("patient_id", "PatientID"), ("study_uid", "StudyInstanceUID")):
        values = sorted({getattr(h, attr) for h in headers})
        if len(values) > 1:
            return f"series mixes {len(values)} {name} values: {', '.join(values[:5])}"
    return None


def _series_table(slices: pd.DataFrame, info: dict[str, dict]) -> pd.DataFrame:
    index = pd.Index(sorted(info), name="patient_id", dtype=object)
    labels = slices.groupby("patient_id")[list(LABELS)].max() if len(slices) else None
    table = pd.DataFrame(index=index)
    table["n_slices"] = [info[u]["n_slices"] for u in index]
    for lab in LABELS:
        table[lab] = labels.loc[index, lab].astype(int).to_numpy() if labels is not None else []
    table["patient_id_dicom"] = [info[u]["patient_id_dicom"] for u in index]
    table["study_uid"] = [info[u]["study_uid"] for u in index]
    return table


def _safe_name(uid: str) -> str:
    """A file name for a series: its UID made safe and short, plus a hash of the exact UID.

    Two UIDs that differ only in characters replaced here (``1.2/3`` and ``1.2_3``), or only
    in case (on a case-insensitive file system), still get distinct names.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", uid)[:96] or "series"
    return f"{safe}-{hashlib.sha1(uid.encode()).hexdigest()[:12]}"


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:16]
