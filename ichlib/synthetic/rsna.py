"""The synthetic head-CT phantom written as an RSNA 2019 folder of DICOM series.

Everything here is SYNTHETIC: volumes come from :func:`ichlib.synthetic.phantom.make_phantom`, and all
identifiers are random. The folder has the layout :func:`ichlib.io.rsna.read_rsna` reads::

    OUT/stage_2_train.csv          ID,Label - six rows per image, images in random order
    OUT/stage_2_train/ID_*.dcm     one flat folder of every image (random file names)
    OUT/README.md, OUT/synthetic.json   (synthetic.json last: the folder is complete)

It exercises what real RSNA data holds. Series are encoded in turn as:

* ``uint12``: unsigned, ``BitsStored`` 12, intercept -1024 (air stored as 0);
* ``bug12``: the RSNA 12-bit bug: 12-bit two's complement values under a header that says
  unsigned, intercept 0 (see :func:`ichlib.io.dicom.pixels.has_12bit_bug`), with a -2000 HU circle
  outside the field of view;
* ``padding``: signed, intercept 0, ``PixelPaddingValue`` -2000 outside the field of view;
* ``int16_fov``: signed, intercept -1024, -2000 stored outside the field of view (-3024 HU).

Series 3 (or the last one, if fewer) is acquired with a gantry tilt of :data:`TILT_DEGREES`
(non-axial ``ImageOrientationPatient``). The first patient has two studies (a follow-up
scan). ``InstanceNumber`` runs backwards in odd series, so only the positions give the right
order. Two images' label rows are repeated in the CSV, as in the real table.
``synthetic.json`` lists, per series, its images from skull base to vertex: the ground truth
for slice order.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ichlib.errors import ConfigError, DataError
from ichlib.io.atomic import atomic_path, atomic_write_text
from ichlib.io.dicom.headers import quiet_pydicom
from ichlib.io.rsna import RSNA_LABEL_ORDER
from ichlib.labels import SUBTYPES
from ichlib.synthetic.phantom import Phantom, make_phantom
from ichlib.synthetic.writer import plan_subtypes

#: Gantry tilt of the tilted series, degrees.
TILT_DEGREES = 20.0
#: Axial direction cosines (rows along +x, columns along +y).
AXIAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Stored-value layouts, used in turn by the series (see the module docstring).
ENCODINGS: dict[str, dict] = {
    "uint12": {"bits_stored": 12, "pixel_representation": 0, "intercept": -1024.0, "outside": None},
    "bug12": {"bits_stored": 12, "pixel_representation": 0, "intercept": 0.0, "outside": -2000},
    "padding": {"bits_stored": 16, "pixel_representation": 1, "intercept": 0.0, "outside": -2000,
                "padding": -2000},
    "int16_fov": {"bits_stored": 16, "pixel_representation": 1, "intercept": -1024.0,
                  "outside": -2000},
}
_ENCODING_CYCLE = ("uint12", "bug12", "padding", "int16_fov")
_TILTED_SERIES = 3
_SLICE_MM = 5.0
_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


def _encode_hu(hu: np.ndarray, encoding: str) -> np.ndarray:
    """Stored values for HU under one of :data:`ENCODINGS` (rounded, clipped to the range).

    Pixels outside the inscribed circle that hold air get the encoding's ``outside`` value
    (stored, before the rescale), like a scanner's field of view.
    """
    enc = ENCODINGS[encoding]
    bits, signed = enc["bits_stored"], enc["pixel_representation"] == 1
    raw = np.rint(np.asarray(hu, dtype=np.float64) - enc["intercept"])
    if encoding == "bug12":  # the header says unsigned; the values are 12-bit two's complement
        lo, hi = -(1 << 11), (1 << 11) - 1
    elif signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    raw = np.clip(raw, lo, hi)
    if enc["outside"] is not None:
        h, w = raw.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        outside = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) > min(h, w) / 2
        raw[..., outside & (np.asarray(hu)[..., :, :] < -900)] = enc["outside"]
    raw = raw.astype(np.int64)
    if encoding == "bug12":
        return (raw & 0xFFF).astype(np.uint16)
    return raw.astype(np.int16 if signed else np.uint16)


def ct_dataset(stored: np.ndarray, *, sop_uid: str, series_uid: str, study_uid: str,
               patient_id: str, position: Sequence[float], orientation: Sequence[float] = AXIAL,
               pixel_spacing: tuple[float, float] = (0.45, 0.45), slice_thickness: float = 5.0,
               intercept: float = -1024.0, slope: float = 1.0, bits_stored: int = 16,
               pixel_representation: int = 1, instance_number: int = 1,
               padding_value: int | None = None, window: tuple[float, float] = (40.0, 80.0),
               series_number: int = 1) -> Dataset:
    """A single-frame, uncompressed CT Image Storage dataset (Explicit VR Little Endian).

    Args:
        stored: ``[Rows, Columns]`` stored values (uint16 or int16; 16 bits allocated).
        sop_uid, series_uid, study_uid, patient_id: Identifiers (RSNA style ``ID_...``
            values are written as they are, like the real data).
        position: ``ImagePositionPatient`` (mm).
        orientation: ``ImageOrientationPatient``.
        pixel_spacing: ``PixelSpacing`` (between rows, between columns).
        slice_thickness: ``SliceThickness``.
        intercept, slope: ``RescaleIntercept`` and ``RescaleSlope``.
        bits_stored: ``BitsStored`` (``HighBit`` is one less).
        pixel_representation: 0 unsigned, 1 signed.
        instance_number: ``InstanceNumber``.
        padding_value: ``PixelPaddingValue``, if any.
        window: ``WindowCenter`` and ``WindowWidth``.
        series_number: ``SeriesNumber``.
    """
    stored = np.asarray(stored)
    if stored.ndim != 2:
        raise ValueError(f"expected one slice [Rows, Columns], got shape {stored.shape}")
    dtype = np.int16 if pixel_representation == 1 else np.uint16
    with quiet_pydicom():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_number
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = (int(s) for s in stored.shape)
        ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
        ds.SliceThickness = _ds(slice_thickness)
        ds.BitsAllocated = 16
        ds.BitsStored = int(bits_stored)
        ds.HighBit = int(bits_stored) - 1
        ds.PixelRepresentation = int(pixel_representation)
        if padding_value is not None:
            ds.add_new(0x00280120, "SS" if pixel_representation == 1 else "US", int(padding_value))
        ds.WindowCenter = _ds(window[0])
        ds.WindowWidth = _ds(window[1])
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored.astype(dtype)).astype("<" + np.dtype(dtype).str[1:]).tobytes())
    return ds


def write_dataset(path: str | os.PathLike, ds: Dataset) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble and file meta), atomically."""
    path = Path(path)
    with quiet_pydicom(), atomic_path(path, suffix=".dcm") as tmp:
        if _PYDICOM3:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        else:  # pydicom 2.4
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(tmp, ds, write_like_original=False)
    return path


def write_synthetic_rsna(out_dir: str | os.PathLike, n_patients: int = 10, size: int = 512,
                         seed: int = 0, n_slices_range: tuple[int, int] = (24, 36),
                         duplicate_rows: int = 2, workers: int | None = None) -> Path:
    """Write a synthetic dataset in the RSNA 2019 layout (see the module docstring).

    There are ``n_patients`` DICOM patients and ``n_patients + 1`` series (the first
    patient has two studies). Each series' generator is seeded from ``(seed, series
    index)``, so the bytes do not depend on ``workers``. Every file is written atomically.

    Args:
        out_dir: Destination folder (created). A folder holding RSNA files that ichlib did
            not generate is refused rather than overwritten.
        n_patients: Number of DICOM patients (at least 1).
        size: In-plane size in pixels (at least 32).
        seed: Master seed.
        n_slices_range: Inclusive range of slices per series (at least 8).
        duplicate_rows: How many images get their six label rows repeated.
        workers: Processes (default: all cores; 1 runs in this process).

    Returns:
        The output folder.
    """
    if n_patients < 1:
        raise ConfigError(f"n_patients must be at least 1, got {n_patients}")
    lo, hi = n_slices_range
    if not 8 <= lo <= hi:
        raise ConfigError(f"n_slices_range must satisfy 8 <= lo <= hi, got {n_slices_range}")
    out = Path(out_dir)
    image_dir = out / "stage_2_train"
    _prepare_folder(out, image_dir)
    rng = np.random.default_rng([seed, 0x5253])
    plans = _plan_series(rng, n_patients, seed)
    tasks = [(image_dir, seed, size, n_slices_range, plan) for plan in plans]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        written = [_write_series(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            written = list(pool.map(_write_series, tasks))

    rows = [(sop, labels) for series in written for sop, labels in series["labels"]]
    order = rng.permutation(len(rows))
    lines = ["ID,Label"]
    for i in order:
        sop, labels = rows[i]
        lines += [f"{sop}_{name},{labels[name]}" for name in RSNA_LABEL_ORDER]
    for i in rng.choice(len(rows), size=min(duplicate_rows, len(rows)), replace=False):
        sop, labels = rows[i]
        at = int(rng.integers(1, len(lines)))
        lines[at:at] = [f"{sop}_{name},{labels[name]}" for name in RSNA_LABEL_ORDER]
    atomic_write_text(out / "stage_2_train.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "README.md", _readme(n_patients, size, seed, n_slices_range))
    meta = {"synthetic": True, "generator": "ichlib.synthetic.rsna.write_synthetic_rsna",
            "format": "rsna", "seed": seed, "size": size, "n_patients": n_patients,
            "n_slices_range": list(n_slices_range),
            "series": [{k: v for k, v in s.items() if k != "labels"} for s in written]}
    atomic_write_text(out / "synthetic.json", json.dumps(meta, indent=2) + "\n")
    return out


# --- internals -------------------------------------------------------------------------

@dataclass(frozen=True)
class _SeriesPlan:
    index: int
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]   # enough for the largest series; the first n are used
    subtypes: tuple[str, ...]
    encoding: str
    tilted: bool


def _plan_series(rng: np.random.Generator, n_patients: int, seed: int) -> list[_SeriesPlan]:
    n_series = n_patients + 1
    used: set[str] = set()

    def new_id(n_hex: int) -> str:
        while True:
            value = "ID_" + "".join(rng.choice(list("0123456789abcdef"), size=n_hex))
            if value not in used:
                used.add(value)
                return value

    patients = [new_id(8) for _ in range(n_patients)]
    owners = [patients[0], *patients]            # the first patient has two studies
    subtypes = plan_subtypes(n_series, seed)
    tilted = min(_TILTED_SERIES, n_series - 1)
    plans = []
    for j, owner in enumerate(owners):
        plans.append(_SeriesPlan(
            index=j, patient_id=owner, study_uid=new_id(10), series_uid=new_id(10),
            sop_uids=tuple(new_id(9) for _ in range(64)), subtypes=tuple(subtypes[j]),
            encoding=_ENCODING_CYCLE[j % len(_ENCODING_CYCLE)], tilted=(j == tilted)))
    return plans


def series_phantom(seed: int, index: int, size: int, n_slices_range: tuple[int, int],
                   subtypes: Sequence[str]) -> Phantom:
    """The phantom behind series ``index`` of :func:`write_synthetic_rsna` (ground truth).

    ``synthetic.json`` records each series' ``index`` and ``subtypes``; with the folder's
    ``seed``, ``size`` and ``n_slices_range`` this regenerates its HU exactly.
    """
    lo, hi = n_slices_range
    rng = np.random.default_rng([seed, index, 104729])
    n = int(rng.integers(lo, hi + 1))
    return make_phantom(rng, size=size, n_slices=n, subtypes=tuple(subtypes))


def _write_series(task: tuple) -> dict:
    image_dir, seed, size, n_slices_range, plan = task
    ph = series_phantom(seed, plan.index, size, n_slices_range, plan.subtypes)
    n = ph.hu.shape[0]
    if n > len(plan.sop_uids):
        raise ConfigError(f"at most {len(plan.sop_uids)} slices per series, got {n}")
    rng = np.random.default_rng([seed, plan.index, 2])
    enc = ENCODINGS[plan.encoding]
    spacing = float(ph.spacing[1]), float(ph.spacing[2])
    if plan.tilted:
        t = math.radians(TILT_DEGREES)
        orientation = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
        dz = _SLICE_MM / math.cos(t)        # table step; planes are 5 mm apart along the normal
    else:
        orientation, dz = AXIAL, _SLICE_MM
    x0 = -spacing[1] * size / 2 + float(rng.normal(0, 2))
    y0 = -spacing[0] * size / 2 + float(rng.normal(0, 2))
    z0 = float(rng.uniform(-120, -60))
    labels = []
    sops = plan.sop_uids[:n]
    for k in rng.permutation(n):            # files are written in random order
        stored = _encode_hu(ph.hu[k], plan.encoding)
        ds = ct_dataset(
            stored, sop_uid=sops[k], series_uid=plan.series_uid, study_uid=plan.study_uid,
            patient_id=plan.patient_id, position=(x0, y0, z0 + k * dz), orientation=orientation,
            pixel_spacing=spacing, slice_thickness=_SLICE_MM, intercept=enc["intercept"],
            bits_stored=enc["bits_stored"], pixel_representation=enc["pixel_representation"],
            instance_number=(n - k) if plan.index % 2 else (k + 1),
            padding_value=enc.get("padding"), series_number=plan.index + 1)
        write_dataset(image_dir / f"{sops[k]}.dcm", ds)
    for k in range(n):
        lab = {s: int(ph.slice_labels[s][k]) for s in SUBTYPES}
        lab["any"] = int(any(lab.values()))
        labels.append((sops[k], lab))
    return {"index": plan.index, "series_uid": plan.series_uid, "study_uid": plan.study_uid,
            "patient_id": plan.patient_id, "encoding": plan.encoding, "tilted": plan.tilted,
            "subtypes": list(plan.subtypes), "images": list(sops), "labels": labels}


def _prepare_folder(out: Path, image_dir: Path) -> None:
    """Create the folders; refuse foreign data; drop the files of an earlier synthetic run."""
    ours = (out / "synthetic.json").exists() or (
        (out / "README.md").exists()
        and "SYNTHETIC" in (out / "README.md").read_text(encoding="utf-8", errors="replace"))
    foreign = (out / "stage_2_train.csv").exists() or (
        image_dir.is_dir() and any(image_dir.glob("*.dcm")))
    if foreign and not ours:
        raise DataError(out, "holds RSNA files that ichlib did not generate; refusing to "
                             "overwrite them (choose an empty folder for the synthetic data)")
    (out / "synthetic.json").unlink(missing_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    for path in image_dir.glob("ID_*.dcm"):
        path.unlink()


def _readme(n_patients: int, size: int, seed: int, n_slices_range: tuple[int, int]) -> str:
    return (
        "# SYNTHETIC head-CT data in the RSNA 2019 layout (not patient data)\n\n"
        "Generated by `ichlib.synthetic.rsna.write_synthetic_rsna` with "
        f"seed={seed}, size={size}, n_patients={n_patients}, "
        f"n_slices_range={tuple(n_slices_range)}.\n\n"
        "It mimics the layout of the RSNA Intracranial Hemorrhage Detection data "
        "(`stage_2_train.csv`, `stage_2_train/ID_*.dcm`), but every image is an analytic "
        "phantom and every identifier is random: no patient data is used or reproduced. "
        "Results on it say nothing about clinical performance.\n\n"
        "`synthetic.json` is written last; if it is missing, the folder is incomplete.\n")


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.6g}"
    return text
