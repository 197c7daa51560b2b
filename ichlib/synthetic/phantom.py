"""A synthetic head-CT phantom with hemorrhages, written in the PhysioNet CT-ICH 1.3.1 layout.

Everything here is SYNTHETIC. No patient data is used or reproduced. The phantom lets the
whole pipeline run, and its tests pass, without the restricted CT-ICH download.

Model. Each patient gets an analytic head in its own frame, in mm: ``x`` to the image right,
``y`` posterior, origin at the centre of the head. The frame is shifted and rotated a few
degrees in the image, and row 0 is anterior. A slice at level ``t`` (0 = skull base,
1 = vertex) is built from closed-form shapes, evaluated on the pixels at full resolution:

* scalp (skin, fat, temporalis), skull (dense tables with a diploe), air cells, orbits;
* the cranial cavity: subarachnoid CSF, a grey-matter ribbon folded by sulci, white matter,
  the interhemispheric and sylvian fissures, basal cisterns, brainstem and cerebellum,
  ventricles, basal ganglia and thalami;
* normal findings that are dense but not blood (below), and a subgaleal swelling over
  fractures.

Each slice averages its slab in z where the slice cuts a surface obliquely, then come noise
and a blur (``BLUR_PX`` pixels) that makes both the in-plane partial volume and the grain of
CT noise.

Tissue HU (noise-free; commonly quoted ranges for unenhanced head CT, e.g. Barrett & Keat
2004, Parizel et al. 2001). Per patient, inside these ranges: grey matter 35-45 (lower with
atrophy), white matter 25-32 and 7-13 below grey, CSF 2-14 (range 0-15), deep grey nuclei
3 below grey, cerebellum 33, brainstem 31, dura and falx 48, dural sinuses 38-62 (flowing
blood, set by the haematocrit; Black et al. 2011), skin 45, fat -90 (-100..-50), vitreous
10, lens 95, skull tables 1650 and diploe about 800 (bone 700-2000), calcification above
100 (120-1100 before partial volume), acute blood 50-90. Oedema is white matter - 8.

Mimics: dense things that are not blood and are not in any mask. Frequencies rise with age
(:func:`_calcification_prevalence`) after CT series of normal adults summarised by Kiroglu
et al. 2010; sizes are those commonly seen.

* Calcified choroid plexus (glomus, in the atria): about half of adults, three quarters
  over 60; bilateral in 85%; 1-4 nodules of about 1-6 mm radius, a cluster up to 1.5 cm.
* Pineal calcification: about half of adults; 1-3 nodules of 1-4 mm radius (mostly < 1 cm).
* Falx calcification: about 1 in 7 (3-30% with age); 1-3 plaques 6-20 mm long, a fifth
  of them ossified (denser, 16-36 mm long).
* Basal-ganglia (globus pallidus) calcification: 0.3-6%; punctate, on both sides.
* Calcifications are 120-1100 HU but are averaged over the slab, so small or off-centre
  ones look 60-150 HU, as on 5 mm slices.
* Partial-volume bone: where the skull is cut obliquely (vertex, floors of the anterior
  and middle cranial fossae) bone and brain share a band as wide as the wall moves
  within the slab (up to a centimetre or more at the vertex), and the slice profile's tails
  (:data:`_SSP_TAIL`) add a few per cent of bone beyond it: large areas of 50-200 HU.
* Beam hardening near the skull base: a bright rim along the bone, a dark bar between the
  petrous ridges, and per patient a shading and 2-7 streaks across the posterior fossa
  (mostly bright, up to +40 HU; one severity per patient, from none to strong).
* Dural venous sinuses (superior sagittal, transverse, sigmoid) at the patient's
  flowing-blood density.

Hemorrhages are 3D objects drawn in the same frame (one per subtype and patient): an
epidural lens (mostly thin, a few 2-2.5 cm), a subdural crescent, subarachnoid blood in
sulci and cisterns, an intraparenchymal clot with oedema, and intraventricular blood
(layering or a cast). Each mask is exactly the set of voxels painted with blood, whatever
its age. A subtype is present on a slice when its mask has at least one voxel there, and
its slices are always consecutive.

Blood ages (:data:`_AGE_MIX`, :data:`_BLOOD_HU`; after Parizel et al. 2001, New & Aronow
1976, Al-Nakshabandi 2001 and Nakaguchi et al. 2001):

* acute: clotted blood 50-90 HU (denser with a higher haematocrit; a quarter faint);
* hyperacute (swirl): an acute clot with unclotted foci of 30-50 HU (active bleeding);
* subacute: isodense, 30-45 HU; a subacute intraparenchymal clot keeps a shrinking
  dense core;
* chronic: hypodense, 0-25 HU;
* acute-on-chronic (mixed): chronic fluid with fresh clot in blobs;
* layering (haematocrit effect, coagulopathy): a dense dependent part (patient supine:
  posterior) under a fluid level and a light upper part of 15-40 HU.

The mix per subtype: epidural 75% acute, 22% swirl, 3% subacute (almost always acute);
subdural 35% acute, 5% swirl, 20% subacute, 20% chronic, 12% acute-on-chronic,
8% layering (subdurals are often old); intraparenchymal 60% acute, 30% subacute,
10% layering; subarachnoid 95% acute (diluted by CSF to 52-80 HU), 5% subacute;
intraventricular acute. Each patient's note names the age of each lesion.

Why: with blood always 50-90 HU and tiny mimics, the fraction of 50-90 HU voxels alone
(:mod:`ichlib.baseline`) scored AUC 0.99-1.00 for ``any``. With the mimics and ages above it
cannot separate the classes on its own, while the blood keeps its shape, place and mass
effect for a CNN to learn (tests/test_phantom.py guards both).

Sources: Barrett JF, Keat N. Artifacts in CT: recognition and avoidance. RadioGraphics
2004;24:1679-91. Parizel PM et al. Intracranial hemorrhage: principles of CT and MRI
interpretation. Eur Radiol 2001;11:1770-83. New PF, Aronow S. Attenuation measurements of
whole blood and blood fractions in computed tomography. Radiology 1976;121:635-40.
Al-Nakshabandi NA. The swirl sign. Radiology 2001;218:433. Nakaguchi H et al. Factors in
the natural history of chronic subdural hematomas that influence their postoperative
recurrence. J Neurosurg 2001;95:256-62. Black DF et al. Cerebral venous sinus density on
noncontrast CT correlates with hematocrit. AJNR 2011;32:1354-7. Kiroglu Y et al.
Intracranial calcifications on CT. Diagn Interv Radiol 2010;16:263-9. The exact numbers
here are choices inside the ranges these give, not measurements.

The number of slices sets how finely the head is sampled from skull base to vertex; the
header always says 5 mm slices (as CT-ICH does), so scans with many slices are stretched
in z.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from ichlib.errors import ConfigError, DataError
from ichlib.io.atomic import atomic_write_text
from ichlib.io.nifti import save_mask, save_volume
from ichlib.labels import CT_ICH_COLUMNS, CT_ICH_CSV_COLUMNS, SUBTYPES
from ichlib.version import __version__

#: CT-ICH 1.3.1's patient numbers: 049-058 and 066-130 (75 patients).
CT_ICH_IDS: tuple[int, ...] = (*range(49, 59), *range(66, 131))
#: Slice thickness written to every header, in mm.
SLICE_MM = 5.0
#: Field of view of a slice, in mm (0.45 mm pixels at 512): the head fills it like a real scan.
FOV_MM = 230.4
#: Gaussian blur applied to every slice, in pixels (partial volume and noise grain).
BLUR_PX = 0.8

#: Codes of the anatomy map in :attr:`Phantom.tissue` (the anatomy before any blood).
TISSUE: dict[str, int] = {
    "air": 0, "skin": 1, "fat": 2, "bone": 3, "csf": 4, "ventricle": 5, "grey": 6,
    "white": 7, "deep_grey": 8, "cerebellum": 9, "brainstem": 10, "calcification": 11,
    "globe": 12, "sinus_air": 13, "dura": 14, "venous_sinus": 15, "lens": 16, "choroid": 17,
}
_T = TISSUE
#: Typical HU of each tissue code (jittered per patient).
_TISSUE_HU = np.array([-1000, 45, -90, 1500, 8, 6, 40, 28, 37, 33, 31, 250, 10, -950, 48,
                       52, 95, 32], dtype=np.float32)
_OUTSIDE_CAVITY = (_T["air"], _T["skin"], _T["fat"], _T["bone"], _T["globe"], _T["sinus_air"],
                   _T["lens"])
_PARENCHYMA = (_T["grey"], _T["white"], _T["deep_grey"], _T["cerebellum"], _T["brainstem"])

#: Prevalence in CT-ICH: 36 of 75 patients positive, and patients with each subtype.
_P_POSITIVE = 36 / 75
_SUBTYPE_COUNTS = {"epidural": 21, "intraparenchymal": 16, "subdural": 4, "subarachnoid": 7,
                   "intraventricular": 5}
_PATIENT_ID_LIMIT = 999
_LESION_TRIES = 4
_MAX_SWELLING_MM = 10.0

#: Noise-free HU range of each part of a haematoma (noise and blur come after).
_BLOOD_HU: dict[str, tuple[float, float]] = {
    "acute": (50.0, 90.0),        # clotted, retracted blood
    "hyperacute": (30.0, 50.0),   # unclotted blood inside a fresh clot (swirl sign)
    "subacute": (30.0, 45.0),     # isodense, days 3 to about 21
    "chronic": (0.0, 25.0),       # hypodense, beyond about 3 weeks
    "serum": (15.0, 40.0),        # the light upper part above a haematocrit level
}
#: The parts each age of blood is made of (a subacute clot keeps a dense core).
_AGE_PARTS: dict[str, tuple[str, ...]] = {
    "acute": ("acute",), "swirl": ("acute", "hyperacute"), "subacute": ("subacute", "acute"),
    "chronic": ("chronic",), "mixed": ("chronic", "acute"), "layered": ("serum", "acute"),
}
#: Age mix per subtype (see the module docstring for why).
_AGE_MIX: dict[str, dict[str, float]] = {
    "epidural": {"acute": 0.75, "swirl": 0.22, "subacute": 0.03},
    "subdural": {"acute": 0.35, "swirl": 0.05, "subacute": 0.20, "chronic": 0.20,
                 "mixed": 0.12, "layered": 0.08},
    "intraparenchymal": {"acute": 0.60, "subacute": 0.30, "layered": 0.10},
    "subarachnoid": {"acute": 0.95, "subacute": 0.05},
    "intraventricular": {"acute": 1.0},
}
_AGE_WORD = {"acute": "acute", "swirl": "hyperacute (swirl)", "subacute": "subacute",
             "chronic": "chronic", "mixed": "acute-on-chronic", "layered": "layering"}

_NB = 2048                       # angle bins of the polar look-up tables
_BIN_ANGLE = ((np.arange(_NB) + 0.5) * (2 * np.pi / _NB) - np.pi).astype(np.float32)
_COS, _SIN = np.cos(_BIN_ANGLE), np.sin(_BIN_ANGLE)
_MARGIN_MM = 4.0                 # air kept around the head for the blur
_HEIGHT_MM = 130.0               # skull base to vertex, for the caps of the outer layers
_SSP_TAIL = 0.4                  # tails of the slice profile, as a share of the wall's movement


# --- public API -------------------------------------------------------------------------

@dataclass
class Phantom:
    """One synthetic patient, in memory.

    Attributes:
        hu: float32 ``[slices, H, W]`` in HU, row 0 anterior.
        masks: Per present subtype (names from :data:`~ichlib.labels.SUBTYPES`), a bool
            ``[slices, H, W]`` of the voxels painted with that blood.
        slice_labels: Per subtype (all five), int8 ``[slices]``: 1 where its mask has a voxel.
        fracture: int8 ``[slices]``: 1 where a skull fracture line is drawn.
        tissue: uint8 ``[slices, H, W]``, the anatomy before blood (codes in :data:`TISSUE`).
        spacing: ``(slice, row, column)`` voxel size in mm.
        age: Age in years (drives atrophy: wider sulci and ventricles).
        sex: ``"Male"`` or ``"Female"``.
        notes: One short description per lesion.
    """

    hu: np.ndarray
    masks: dict[str, np.ndarray]
    slice_labels: dict[str, np.ndarray]
    fracture: np.ndarray
    tissue: np.ndarray
    spacing: tuple[float, float, float]
    age: int
    sex: str
    notes: list[str] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        """The union of all subtype masks, bool ``[slices, H, W]``."""
        union = np.zeros(self.hu.shape, dtype=bool)
        for m in self.masks.values():
            union |= m
        return union

    @property
    def no_hemorrhage(self) -> np.ndarray:
        """int8 ``[slices]``: 1 where no subtype is present."""
        present = np.zeros(self.hu.shape[0], dtype=bool)
        for lab in self.slice_labels.values():
            present |= lab.astype(bool)
        return (~present).astype(np.int8)


def patient_ids(n_patients: int) -> list[int]:
    """Patient numbers for ``n_patients`` synthetic patients.

    75 patients get CT-ICH's own numbers (049-058, 066-130), so code written against the
    real folder finds the same IDs. Any other count gets 1..n.

    Raises:
        ConfigError: If ``n_patients`` is not in 1..999 (IDs are three digits).
    """
    if not 1 <= n_patients <= _PATIENT_ID_LIMIT:
        raise ConfigError(f"n_patients must be 1..{_PATIENT_ID_LIMIT}, got {n_patients}")
    if n_patients == len(CT_ICH_IDS):
        return list(CT_ICH_IDS)
    return list(range(1, n_patients + 1))


def plan_subtypes(n_patients: int, seed: int = 0) -> list[tuple[str, ...]]:
    """Draw which subtypes each patient has, with CT-ICH's prevalence.

    About half the patients are positive; given positive, each subtype is drawn with its
    CT-ICH frequency (epidural and intraparenchymal commonest). With 10 or more patients,
    every subtype appears at least once and there is at least one negative patient, so any
    reasonable split has positives of each kind.
    """
    rng = np.random.default_rng([seed, 7919])
    names = list(_SUBTYPE_COUNTS)
    p_given_pos = np.array([_SUBTYPE_COUNTS[s] for s in names]) / (_P_POSITIVE * 75)
    plan: list[set[str]] = []
    for _ in range(n_patients):
        chosen: set[str] = set()
        if rng.random() < _P_POSITIVE:
            chosen = {s for s, p in zip(names, p_given_pos) if rng.random() < p}
            if not chosen:
                chosen = {names[int(rng.choice(len(names), p=p_given_pos / p_given_pos.sum()))]}
        plan.append(chosen)
    if n_patients >= 10:
        _ensure_coverage(plan, names, rng)
    return [tuple(s for s in SUBTYPES if s in chosen) for chosen in plan]


def make_phantom(rng: np.random.Generator, size: int = 512, n_slices: int = 36,
                 subtypes: Sequence[str] = ()) -> Phantom:
    """Make one synthetic patient in memory.

    Args:
        rng: The only source of randomness; the same state gives the same phantom.
        size: In-plane size in pixels; the pixel size scales so the head keeps its size in mm.
        n_slices: Slices from skull base to vertex.
        subtypes: Hemorrhage subtypes to draw (names from :data:`~ichlib.labels.SUBTYPES`),
            one lesion each; empty for a normal scan.

    Raises:
        ConfigError: For an unknown subtype, ``size < 32`` or ``n_slices < 8``.
    """
    unknown = sorted(set(subtypes) - set(SUBTYPES))
    if unknown:
        raise ConfigError(f"unknown subtype(s) {unknown}; expected some of {', '.join(SUBTYPES)}")
    if size < 32 or n_slices < 8:
        raise ConfigError(f"need size >= 32 and n_slices >= 8, got {size} and {n_slices}")
    head = _draw_head(rng, size, n_slices)
    grid = _make_grid(head)
    wanted = [s for s in SUBTYPES if s in set(subtypes)]
    for _ in range(_LESION_TRIES):   # redraw when a lesion missed its tissue on every slice
        lesions = [_draw_lesion(rng, head, s) for s in wanted]
        _draw_fracture(rng, head, lesions)
        head.shift = _midline_shift(head, lesions)
        clean, tissue, painted = _build_slices(head, grid, lesions)
        if all(painted):
            break
    _paint_oedema(clean, painted, head)
    masks = _paint_blood(clean, painted, lesions, grid, head)
    hu = _finish(clean, grid, head, rng)
    return _assemble(head, grid, hu, tissue, masks, lesions)


def write_synthetic_ct_ich(out_dir: str | os.PathLike, n_patients: int = 75, size: int = 512,
                           seed: int = 0, n_slices_range: tuple[int, int] = (28, 58),
                           workers: int | None = None) -> Path:
    """Write a synthetic dataset in the exact PhysioNet CT-ICH 1.3.1 layout.

    Writes ``ct_scans/NNN.nii`` and ``masks/NNN.nii`` (through
    :func:`~ichlib.io.nifti.save_volume` and :func:`~ichlib.io.nifti.save_mask`),
    ``hemorrhage_diagnosis_raw_ct.csv``, ``Patient_demographics.csv`` (two-row header),
    ``README.md`` and, last, ``synthetic.json``: its presence means the folder is complete.
    IDs come from :func:`patient_ids`. Each patient's generator is seeded from
    ``(seed, patient number)``, so the bytes do not depend on ``workers``.

    Args:
        out_dir: Destination folder (created). A folder that holds CT files but was not
            written by this function is refused rather than overwritten.
        n_patients: Number of patients (75 gives CT-ICH's IDs).
        size: In-plane size in pixels.
        seed: Master seed.
        n_slices_range: Inclusive range of the number of slices per patient.
        workers: Processes (default: all cores; 1 runs in this process).

    Returns:
        The output folder.
    """
    out = Path(out_dir)
    ids = patient_ids(n_patients)
    lo, hi = n_slices_range
    if not 8 <= lo <= hi:
        raise ConfigError(f"n_slices_range must satisfy 8 <= lo <= hi, got {n_slices_range}")
    _prepare_folder(out, ids)
    atomic_write_text(out / "README.md", _readme(n_patients, size, seed, n_slices_range))
    plan = plan_subtypes(n_patients, seed)
    tasks = [(out, pid, seed, size, n_slices_range, sub) for pid, sub in zip(ids, plan)]
    workers = max(1, min(workers or os.cpu_count() or 1, n_patients))
    if workers == 1:
        records = [_write_patient(task) for task in tasks]
    else:   # biggest scans first, so no worker is left with a long one at the end
        order = sorted(range(n_patients), key=lambda i: -_n_slices(seed, ids[i], n_slices_range))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = dict(zip(order, pool.map(_write_patient, [tasks[i] for i in order])))
        records = [done[i] for i in range(n_patients)]
    atomic_write_text(out / "hemorrhage_diagnosis_raw_ct.csv", _slice_csv(records))
    atomic_write_text(out / "Patient_demographics.csv", _demographics_csv(records))
    meta = {"synthetic": True, "generator": "ichlib.synthetic.phantom.write_synthetic_ct_ich",
            "ichlib_version": _version(), "seed": seed, "size": size, "n_patients": n_patients,
            "n_slices_range": list(n_slices_range), "patient_ids": [f"{i:03d}" for i in ids]}
    atomic_write_text(out / "synthetic.json", _json(meta))
    return out


# --- the dataset folder -----------------------------------------------------------------

@dataclass(frozen=True)
class _Record:
    """What the parent needs from a written patient for the CSV files."""

    pid: int
    slice_labels: dict[str, np.ndarray]
    fracture: np.ndarray
    age: int
    sex: str
    notes: tuple[str, ...]


def _patient_rng(seed: int, pid: int, n_slices_range: tuple[int, int]
                 ) -> tuple[np.random.Generator, int]:
    """The patient's own generator (from seed and patient number) and its slice count."""
    rng = np.random.default_rng([seed, pid])
    lo, hi = n_slices_range
    return rng, int(rng.integers(lo, hi + 1))


def _n_slices(seed: int, pid: int, n_slices_range: tuple[int, int]) -> int:
    """The patient's slice count, as :func:`_write_patient` will draw it."""
    return _patient_rng(seed, pid, n_slices_range)[1]


def _write_patient(task: tuple) -> _Record:
    """Make one patient and write its scan and mask (runs in a worker process)."""
    out, pid, seed, size, n_slices_range, subtypes = task
    rng, n_slices = _patient_rng(seed, pid, n_slices_range)
    ph = make_phantom(rng, size=size, n_slices=n_slices, subtypes=subtypes)
    save_volume(out / "ct_scans" / f"{pid:03d}.nii", ph.hu, spacing=ph.spacing)
    save_mask(out / "masks" / f"{pid:03d}.nii", ph.mask, spacing=ph.spacing)
    return _Record(pid, ph.slice_labels, ph.fracture, ph.age, ph.sex, tuple(ph.notes))


def _prepare_folder(out: Path, ids: list[int]) -> None:
    """Create the folders; refuse foreign data; drop stale files of an earlier synthetic run."""
    existing = [p for sub in ("ct_scans", "masks") if (out / sub).is_dir()
                for p in (out / sub).glob("*.nii*")]
    readme = out / "README.md"
    ours = (out / "synthetic.json").exists() or (
        readme.exists() and "SYNTHETIC" in readme.read_text(encoding="utf-8", errors="replace"))
    if existing and not ours:
        raise DataError(out, "holds CT scans that ichlib did not generate; refusing to overwrite "
                             "them (choose an empty folder for the synthetic data)")
    (out / "synthetic.json").unlink(missing_ok=True)
    keep = {f"{i:03d}.nii" for i in ids}
    for sub in ("ct_scans", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for path in (out / sub).iterdir():
            if re.fullmatch(r"\d{3}\.nii", path.name) and path.name not in keep:
                path.unlink()


def _slice_csv(records: list[_Record]) -> str:
    """``hemorrhage_diagnosis_raw_ct.csv``: one row per slice, labels from the masks."""
    lines = [",".join(CT_ICH_CSV_COLUMNS)]
    column_of = {col: sub for sub, col in CT_ICH_COLUMNS.items()}
    for rec in records:
        for k in range(len(rec.fracture)):
            vals = {col: int(rec.slice_labels[sub][k]) for col, sub in column_of.items()}
            vals["No_Hemorrhage"] = int(not any(vals.values()))
            vals["Fracture_Yes_No"] = int(rec.fracture[k])
            vals["PatientNumber"], vals["SliceNumber"] = rec.pid, k + 1
            lines.append(",".join(str(vals[c]) for c in CT_ICH_CSV_COLUMNS))
    return "\n".join(lines) + "\n"


def _demographics_csv(records: list[_Record]) -> str:
    """``Patient_demographics.csv`` with CT-ICH's two-row header (group, then column)."""
    cols = [c for c in CT_ICH_CSV_COLUMNS if c in CT_ICH_COLUMNS.values()]
    group = "Hemorrhage type based on the radiologist diagnosis"
    top = ["Patient Number", "Age (years)", "Gender", group] + [""] * (len(cols) - 1)
    top += ["Fracture (yes 1/no 0)", "Note"]
    second = ["", "", "", *cols, "", ""]
    lines = [",".join(top), ",".join(second)]
    sub_of = {col: sub for sub, col in CT_ICH_COLUMNS.items()}
    for rec in records:
        flags = [str(int(rec.slice_labels[sub_of[c]].any())) for c in cols]
        note = "; ".join(rec.notes) if rec.notes else "normal"
        lines.append(",".join([str(rec.pid), str(rec.age), rec.sex, *flags,
                               str(int(rec.fracture.any())), f'"synthetic: {note}"']))
    return "\n".join(lines) + "\n"


def _readme(n_patients: int, size: int, seed: int, n_slices_range: tuple[int, int]) -> str:
    """The dataset's README, which says plainly that the data are synthetic."""
    return (
        "# SYNTHETIC head-CT data (not patient data)\n\n"
        f"Generated by ichlib {_version()} (`ichlib.synthetic.phantom.write_synthetic_ct_ich`) with "
        f"seed={seed}, size={size}, n_patients={n_patients}, "
        f"n_slices_range={tuple(n_slices_range)}.\n\n"
        "It mimics the file layout of PhysioNet CT-ICH 1.3.1 (`ct_scans/`, `masks/`, "
        "`hemorrhage_diagnosis_raw_ct.csv`, `Patient_demographics.csv`), but every volume is "
        "an analytic phantom: no patient data is used or reproduced. Results on it say "
        "nothing about clinical performance.\n\n"
        "`synthetic.json` is written last; if it is missing, the folder is incomplete.\n")


def _json(meta: dict) -> str:
    """Pretty JSON with a final newline."""
    return json.dumps(meta, indent=2) + "\n"


def _version() -> str:
    """ichlib's version, for the phantom's ``synthetic.json``."""
    return __version__


def _ensure_coverage(plan: list[set[str]], names: list[str], rng: np.random.Generator) -> None:
    """Give every missing subtype to a patient, and keep at least one negative patient."""
    if all(plan):
        plan[int(rng.integers(len(plan)))].clear()
    for name in names:
        if not any(name in chosen for chosen in plan):
            positives = [i for i, chosen in enumerate(plan) if chosen]
            pool = positives if positives else list(range(1, len(plan)))
            plan[pool[int(rng.integers(len(pool)))]].add(name)


# --- one patient: parameters ------------------------------------------------------------

@dataclass
class _Head:
    """Per-patient parameters (mm, HU, radians). ``levels[k]`` is slice k's level t."""

    size: int
    px: float
    levels: np.ndarray
    centre: tuple[float, float]
    angle: float
    a: float
    b: float
    shape: np.ndarray
    skull: np.ndarray
    scalp: float
    fat: float
    atrophy: float
    age: int
    sex: str
    hu: np.ndarray
    noise_sd: float
    cortex_mm: float
    sulci: list[tuple[int, float, float, float]]
    frontal_sinus: bool
    bh_amp: float
    calcs: list[tuple[str, float, float, float, float, float, float, float]]
    streaks: list[tuple[float, ...]]
    hct: float
    seed: int
    fracture: dict = field(default_factory=dict)
    shift: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of slices."""
        return len(self.levels)

    @property
    def dt(self) -> float:
        """Level step between slices."""
        return float(self.levels[1] - self.levels[0])

    @property
    def kb(self) -> float:
        """Brain scale relative to an average adult (inner half-width 66 mm)."""
        return self.a / 66.0

    def slice_at(self, t: float) -> int:
        """The slice whose level is nearest to ``t`` (clipped to the scan)."""
        return int(np.clip(round((t - self.levels[0]) / self.dt), 0, self.n - 1))


def _draw_head(rng: np.random.Generator, size: int, n_slices: int) -> _Head:
    """Draw one patient's anatomy parameters."""
    age = int(np.clip(rng.normal(48, 19), 16, 92))
    sex = "Male" if rng.random() < 0.6 else "Female"
    atrophy = float(np.clip((age - 35) / 50 + rng.normal(0, 0.12), 0, 1))
    big = 1.0 if sex == "Male" else 0.96
    a = float(rng.normal(66, 3.0) * big)
    b = float(rng.normal(84, 3.5) * big)
    px = FOV_MM / size * float(rng.uniform(0.96, 1.04))
    j = np.arange(2, 7)[:, None]
    coef = rng.normal(0, 0.012, (5, 1)) / (j / 2)
    shape = 1 + (coef * np.cos(j * _BIN_ANGLE + rng.uniform(0, 2 * np.pi, (5, 1)))).sum(0)
    shape += rng.normal(0, 0.01) * _COS
    skull0 = rng.uniform(4.2, 6.2)
    skull = skull0 * (1 - 0.25 * np.cos(2 * _BIN_ANGLE)) * (1 + 0.08 * np.cos(
        3 * _BIN_ANGLE + rng.uniform(0, 6.3)))
    hct = float(np.clip(rng.normal(41, 5), 26, 56))
    hu = _tissue_hu(rng, atrophy, hct)
    t_lo, t_hi = rng.uniform(0.0, 0.06), rng.uniform(0.955, 1.01)
    half = FOV_MM / 2
    centre = (float(rng.uniform(-0.04, 0.04) * half), float(rng.uniform(-0.05, 0.05) * half))
    sulci = [(int(rng.integers(24, 32)), 8.0, 18.0, 0.35 + 1.3 * atrophy),
             (int(rng.integers(36, 48)), 3.0, 8.0, 0.3 + 0.8 * atrophy)]
    return _Head(
        size=size, px=px, levels=np.linspace(t_lo, t_hi, n_slices), centre=centre,
        angle=float(np.clip(rng.normal(0, 0.07), -0.17, 0.17)), a=a, b=b,
        shape=shape.astype(np.float32), skull=skull.astype(np.float32),
        scalp=float(rng.uniform(4.0, 6.5)), fat=float(rng.uniform(1.2, 3.5)),
        atrophy=atrophy, age=age, sex=sex, hu=hu, noise_sd=float(rng.uniform(4.0, 6.0)),
        cortex_mm=float(rng.uniform(2.4, 3.0)), sulci=sulci,
        frontal_sinus=bool(rng.random() < 0.8), bh_amp=float(rng.uniform(8, 22)),
        calcs=_draw_calcifications(rng, age, a / 66.0, atrophy),
        streaks=_draw_streaks(rng, a, b), hct=hct, seed=int(rng.integers(2**31)))


def _tissue_hu(rng: np.random.Generator, atrophy: float, hct: float) -> np.ndarray:
    """The patient's HU per tissue code: :data:`_TISSUE_HU` jittered inside published ranges.

    Grey matter 35-45 HU (lower with atrophy), white matter 25-32 HU and 7-13 HU below grey,
    CSF 0-15 HU; blood in the dural sinuses follows the haematocrit (38-62 HU).
    """
    hu = _TISSUE_HU.copy()
    grey = float(np.clip(40 + rng.normal(0, 1.5) - 2.0 * atrophy, 35, 45))
    white = float(np.clip(grey - rng.uniform(7, 11), 25, 32))
    csf = float(np.clip(8 + rng.normal(0, 2.0), 2, 14))
    hu[_T["grey"]], hu[_T["white"]], hu[_T["csf"]] = grey, white, csf
    hu[_T["ventricle"]] = max(0.0, csf - 2)
    hu[_T["deep_grey"]] = grey - 3
    hu[_T["venous_sinus"]] = _sinus_hu(hct)
    return hu


def _sinus_hu(hct: float) -> float:
    """HU of flowing blood in the dural sinuses for a haematocrit in per cent (38-62 HU)."""
    return float(np.clip(14 + 0.85 * hct, 38, 62))


def _calcification_prevalence(age: float) -> dict[str, float]:
    """Chance that a patient of ``age`` years has each physiological calcification.

    Rising with age, as in CT series of normal adults (see the module docstring): choroid
    plexus and pineal in about half to three quarters of adults, falx in about one in
    seven, basal ganglia in a few per cent.
    """
    a = float(age)
    return {"choroid": float(np.clip(0.05 + 0.0135 * (a - 10), 0.03, 0.9)),
            "pineal": float(np.clip(0.05 + 0.012 * (a - 10), 0.03, 0.8)),
            "falx": float(np.clip(0.03 + 0.004 * (a - 20), 0.03, 0.3)),
            "basal_ganglia": float(np.clip(0.003 + 0.001 * (a - 30), 0.003, 0.06))}


def _draw_calcifications(rng: np.random.Generator, age: int, kb: float,
                         atrophy: float) -> list[tuple[str, float, float, float, float, float,
                                                       float, float]]:
    """Physiological calcifications (not hemorrhage), as clusters of ellipsoids.

    Each is ``(kind, x, y, z, rx, ry, rz, HU)``: centre in the head frame and height above
    the skull base (mm), semi-axes (mm), and the density of the calcified tissue itself.
    A slice shows it averaged over its slab (:func:`_calcify`).
    """
    prev = _calcification_prevalence(age)
    calcs: list[tuple] = []

    def cluster(kind: str, x: float, y: float, t: float, n: int, spread: float,
                r: tuple[float, float], hu: tuple[float, float]) -> None:
        for _ in range(n):
            rad = rng.uniform(*r)
            calcs.append((kind, x + rng.normal(0, spread), y + rng.normal(0, spread),
                          t * _HEIGHT_MM + rng.normal(0, spread),
                          rad * rng.uniform(0.7, 1.3), rad * rng.uniform(0.7, 1.3),
                          rad * rng.uniform(0.7, 1.3), rng.uniform(*hu)))

    if rng.random() < prev["choroid"]:   # glomus of the choroid plexus, in both atria
        size = rng.uniform(0.6, 1.0)
        sides = (-1, 1) if rng.random() < 0.85 else (int(rng.choice([-1, 1])),)
        for s in sides:
            cluster("choroid", s * (15 + 3 * atrophy) * kb + rng.normal(0, 1),
                    24 * kb + rng.normal(0, 1.5), rng.uniform(0.44, 0.49),
                    int(rng.integers(1, 5)), 2.5, (2.0 * size, 5.0 * size), (150, 700))
    if rng.random() < prev["pineal"]:
        cluster("pineal", rng.normal(0, 0.6), (21 + 2 * atrophy) * kb, rng.uniform(0.40, 0.45),
                int(rng.integers(1, 4)), 1.0, (1.0, 3.0), (150, 800))
    if rng.random() < prev["basal_ganglia"]:   # globus pallidus, both sides alike
        lvl, n = rng.uniform(0.40, 0.46), int(rng.integers(2, 6))
        for s in (-1, 1):
            cluster("basal_ganglia", s * 17 * kb, -2 * kb, lvl, n, 2.5, (0.8, 2.5), (120, 450))
    if rng.random() < prev["falx"]:   # plaques in the falx, elongated front to back
        ossified = rng.random() < 0.2
        for _ in range(int(rng.integers(1, 4))):
            y = rng.uniform(-50, 45) * kb
            ry = rng.uniform(8, 18) if ossified else rng.uniform(3, 10)
            calcs.append(("falx", 1.5 * math.sin(y / 40), y, rng.uniform(0.55, 0.88) * _HEIGHT_MM,
                          rng.uniform(0.7, 1.5) * (2 if ossified else 1), ry,
                          rng.uniform(5, 12) if ossified else rng.uniform(2, 6),
                          rng.uniform(500, 1100) if ossified else rng.uniform(250, 900)))
    return [(c[0], *(float(v) for v in c[1:])) for c in calcs]


def _draw_streaks(rng: np.random.Generator, a: float, b: float) -> list[tuple[float, ...]]:
    """Beam-hardening artefacts across the posterior fossa, between the petrous bones.

    Each is ``(x0, y0, angle, across, along, HU, t_lo, t_hi)``: a Gaussian band through
    (x0, y0) in the head frame (mm) running at ``angle`` (0 = left-right), with SDs
    ``across`` and ``along`` it (mm), adding ``HU`` over levels ``t_lo..t_hi``. Streaks
    are long thin bands, mostly bright and sometimes dark; the first entry is a broad
    shading that raises the brain between the petrous ridges. How strong they all are
    varies a lot between scanners and head positions, so one ``severity`` scales them.
    """
    severity = rng.uniform(0, 1) ** 1.3
    t_lo = rng.uniform(0.04, 0.1)
    out = [(0.0, rng.uniform(0.1, 0.25) * b, rng.normal(0, 0.1), rng.uniform(10, 18),
            rng.uniform(0.3, 0.45) * a, severity * rng.uniform(5, 20), t_lo,
            t_lo + rng.uniform(0.18, 0.26))]
    for _ in range(int(rng.integers(2, 8))):
        t_lo = rng.uniform(0.03, 0.18)
        amp = severity * rng.uniform(10, 40) * (1.0 if rng.random() < 0.75 else -0.7)
        out.append((rng.uniform(-0.2, 0.2) * a, rng.uniform(0.02, 0.35) * b,
                    rng.normal(0, 0.35), rng.uniform(1.5, 5.0), 1000.0, amp, t_lo,
                    t_lo + rng.uniform(0.08, 0.18)))
    return [tuple(float(v) for v in s) for s in out]


# --- one patient: lesions ---------------------------------------------------------------

@dataclass
class _Lesion:
    """One hemorrhage: a 3D shape, evaluated slice by slice.

    ``kc`` is the centre slice (float) and ``hz`` the half-span in slices: slice k holds
    the lesion when ``|k - kc| < hz``. ``params`` depend on the subtype; ``age`` (a key of
    :data:`_AGE_PARTS`) and ``look`` (HU of its parts, pattern) set how the blood looks.
    """

    subtype: str
    kc: float
    hz: float
    hu: float
    params: dict
    note: str
    age: str = "acute"
    look: dict = field(default_factory=dict)

    def u(self, k: int) -> float | None:
        """Relative z position of slice k in the lesion, or None outside it."""
        u = (k - self.kc) / self.hz
        return u if abs(u) < 1 else None


def _span(rng: np.random.Generator, head: _Head, t_lo: float, t_hi: float,
          n_lo: int, n_hi: int) -> tuple[float, float]:
    """A slice span of n_lo..n_hi slices whose centre lies at levels t_lo..t_hi."""
    k_lo, k_hi = head.slice_at(t_lo), head.slice_at(t_hi)
    n = int(rng.integers(n_lo, n_hi + 1))
    n = max(1, min(n, k_hi - k_lo + 1))
    start = int(rng.integers(k_lo, k_hi - n + 2))
    return start + (n - 1) / 2, n / 2 + 0.01


def _side_word(x: float) -> str:
    """The patient's side of head-frame x, radiological convention."""
    return "right" if x < 0 else "left"   # radiological convention: image left = patient right


def _region_word(theta: float) -> str:
    """A lobe name for a head-frame angle (-90 degrees is anterior)."""
    deg = math.degrees(theta)
    if -135 < deg < -45:
        return "frontal"
    if 45 < deg < 135:
        return "occipital"
    return "temporoparietal"


def _draw_lesion(rng: np.random.Generator, head: _Head, subtype: str) -> _Lesion:
    """Draw one lesion of ``subtype`` with a varied size, place, age and density.

    A quarter of the acute ones are faint (50-60 HU); fresh clot is denser with a higher
    haematocrit. Sizes run from a few voxels to large. The age is drawn from
    :data:`_AGE_MIX`.
    """
    faint = rng.random() < 0.25
    hu = float(rng.uniform(51, 60) if faint else rng.uniform(60, 84))
    hu = float(np.clip(hu + 0.4 * (head.hct - 41), _BLOOD_HU["acute"][0] + 1, 86))
    draw = {"epidural": _draw_extra_axial, "subdural": _draw_extra_axial,
            "subarachnoid": _draw_sah, "intraparenchymal": _draw_iph,
            "intraventricular": _draw_ivh}[subtype]
    les = draw(rng, head, subtype, hu, faint)
    mix = _AGE_MIX[subtype]
    les.age = str(rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values())))
    les.look = _draw_look(rng, les)
    les.note = f"{_AGE_WORD[les.age]} {les.note}"
    return les


def _draw_look(rng: np.random.Generator, les: _Lesion) -> dict:
    """HU of each part of a lesion of age ``les.age``, and where the parts lie.

    ``frac``: share of the blood in the second part (swirl, mixed); ``level``: where the
    fluid level cuts the lesion's extent from the top (layered); ``core``: radius of the
    dense core as a fraction of the clot's (subacute intraparenchymal).
    """
    look: dict = {"acute": les.hu, "phase": rng.uniform(0, 2 * np.pi, 3).tolist(),
                  "wave": float(rng.uniform(7, 13))}
    age = les.age
    if age == "swirl":
        look |= {"hyperacute": rng.uniform(33, 46), "frac": rng.uniform(0.15, 0.35)}
    elif age == "subacute":
        look["subacute"] = rng.uniform(32, 44)
        if les.subtype == "intraparenchymal":
            look |= {"core": rng.uniform(0.3, 0.7), "acute": rng.uniform(55, 72)}
    elif age == "chronic":
        look["chronic"] = rng.uniform(6, 22)
    elif age == "mixed":
        look |= {"chronic": rng.uniform(8, 22), "acute": rng.uniform(55, 78),
                 "frac": rng.uniform(0.15, 0.4)}
    elif age == "layered":
        look |= {"serum": rng.uniform(18, 36), "acute": rng.uniform(58, 82),
                 "level": rng.uniform(0.3, 0.7)}
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in look.items()}


def _draw_extra_axial(rng: np.random.Generator, head: _Head, subtype: str, hu: float,
                      faint: bool) -> _Lesion:
    """An epidural lens (short, thick) or a subdural crescent (long, thin) on the convexity."""
    theta = float(rng.uniform(-np.pi, np.pi))
    size = rng.uniform(0, 1) ** (2.0 if faint else 1.4)
    if subtype == "epidural":   # most are thin; a few reach 2-3 cm
        kc, hz = _span(rng, head, 0.36, 0.8, 3, 8)
        params = {"theta": theta, "alpha": float(rng.uniform(0.2, 0.45)),
                  "h": float(max(2.5 * head.px, 3 + 22 * size)), "power": 1.0}
        note = f"{_side_word(math.cos(theta))} {_region_word(theta)} epidural"
    else:
        kc, hz = _span(rng, head, 0.38, 0.8, 4, 12)
        params = {"theta": theta, "alpha": float(rng.uniform(0.55, 1.1)),
                  "h": float(max(2.2 * head.px, 2 + 12 * size)), "power": 0.35,
                  "bilateral": bool(rng.random() < 0.2)}
        side = "bilateral" if params["bilateral"] else _side_word(math.cos(theta))
        note = f"{side} {_region_word(theta)} subdural"
    return _Lesion(subtype, kc, hz, hu, params, note)


def _draw_sah(rng: np.random.Generator, head: _Head, subtype: str, hu: float,
              faint: bool) -> _Lesion:
    """Subarachnoid blood in a sylvian fissure, the basal cisterns or convexity sulci."""
    mode = str(rng.choice(["sylvian", "cisterns", "convexity"], p=[0.4, 0.25, 0.35]))
    s = float(rng.choice([-1, 1]))
    if mode == "sylvian":
        kc, hz = _span(rng, head, 0.28, 0.42, 3, 6)
        params = {"x": s * 0.6 * head.a, "y": -0.05 * head.b, "r": float(rng.uniform(14, 35))}
    elif mode == "cisterns":
        kc, hz = _span(rng, head, 0.22, 0.32, 2, 4)
        params = {"x": 0.0, "y": -0.05 * head.b, "r": float(rng.uniform(25, 45))}
    else:
        theta = float(rng.uniform(-np.pi, np.pi))
        kc, hz = _span(rng, head, 0.55, 0.82, 3, 7)
        params = {"theta": theta, "r": float(rng.uniform(14, 35))}
        s = math.cos(theta)
    side = "" if mode == "cisterns" else _side_word(s) + " "
    hu = float(np.clip(rng.uniform(54, 76) + 0.4 * (head.hct - 41), 52, 80))   # mixed with CSF
    return _Lesion(subtype, kc, hz, hu, params, f"{side}{mode} subarachnoid")


def _draw_iph(rng: np.random.Generator, head: _Head, subtype: str, hu: float,
              faint: bool) -> _Lesion:
    """An irregular intraparenchymal clot, deep (basal ganglia) or lobar, often with oedema."""
    r = float(np.exp(rng.uniform(np.log(max(4.0, 3 * head.px)), np.log(28))))
    deep = rng.random() < 0.5
    n_z = int(np.clip(round(2 * r * rng.uniform(0.8, 1.2) / SLICE_MM), 2, 12))
    s = float(rng.choice([-1, 1]))
    if deep:
        kc, hz = _span(rng, head, 0.37, 0.5, n_z, n_z)
        x, y = s * rng.uniform(16, 26) * head.kb, rng.uniform(-8, 10) * head.kb
    else:
        kc, hz = _span(rng, head, 0.45, 0.78, n_z, n_z)
        theta = float(rng.uniform(-np.pi, np.pi))
        inner = float(np.interp(theta, _BIN_ANGLE, _outline(head, head.levels[round(kc)])))
        rad = max(10.0, inner - r - rng.uniform(8, 20))
        x, y = rad * math.cos(theta), rad * math.sin(theta)
    j = np.arange(2, 6)
    params = {"x": float(x), "y": float(y), "r": r, "amp": rng.normal(0, 0.08, 4) / (j / 2),
              "phase": rng.uniform(0, 2 * np.pi, 4), "j": j,
              "oedema": float(rng.uniform(1.5, 6.0) if rng.random() < 0.7 else 0.0)}
    where = "basal ganglia" if deep else "lobar"
    return _Lesion(subtype, kc, hz, hu, params, f"{_side_word(x)} {where} intraparenchymal")


def _draw_ivh(rng: np.random.Generator, head: _Head, subtype: str, hu: float,
              faint: bool) -> _Lesion:
    """Intraventricular blood: layering in the occipital horns, or a cast of one side."""
    if rng.random() < 0.6:
        kc, hz = _span(rng, head, 0.43, 0.5, 2, 4)
        params = {"mode": "layer", "depth": float(max(3 * head.px, rng.uniform(3, 9)))}
        note = "layering intraventricular"
    else:
        s = float(rng.choice([-1, 1]))
        kc, hz = _span(rng, head, 0.42, 0.6, 2, 5)
        params = {"mode": "cast", "side": s}
        note = f"{_side_word(s)} ventricular cast"
    return _Lesion(subtype, kc, hz, hu, params, note)


def _draw_fracture(rng: np.random.Generator, head: _Head, lesions: list[_Lesion]) -> None:
    """Put a fracture over half the epidurals, and over a few other heads."""
    head.fracture = {}
    epi = [les for les in lesions if les.subtype == "epidural"]
    if epi and rng.random() < 0.5:
        les = epi[0]
        k0 = int(round(les.kc))
        ks = list(range(k0 - int(rng.integers(0, 2)), k0 + int(rng.integers(1, 3))))
        theta = les.params["theta"] + rng.normal(0, 0.05)
    elif rng.random() < 0.05:
        k0 = int(rng.integers(head.slice_at(0.45), head.slice_at(0.75) + 1))
        ks, theta = [k0, k0 + 1], rng.uniform(-np.pi, np.pi)
    else:
        return
    head.fracture = {"theta": float(theta), "slices": [k for k in ks if 0 <= k < head.n],
                     "swelling": float(rng.uniform(3, _MAX_SWELLING_MM)), "tilt": float(rng.normal(0, 0.08))}


def _midline_shift(head: _Head, lesions: list[_Lesion]) -> np.ndarray:
    """Per-slice midline shift in mm (signed along x) from mass effect of large lesions."""
    shift = np.zeros(head.n, dtype=np.float32)
    for les in lesions:
        p = les.params
        if les.subtype in ("epidural", "subdural") and not p.get("bilateral"):
            mm, side = 0.45 * (p["h"] - 9), math.cos(p["theta"])
        elif les.subtype == "intraparenchymal":
            mm, side = 0.35 * (p["r"] - 14), p["x"]
        else:
            continue
        if mm <= 0:
            continue
        k = np.arange(head.n)
        prof = np.clip(1 - np.abs(k - les.kc) / (les.hz + 5), 0, 1)
        shift -= float(np.sign(side) * min(mm, 11.0)) * prof.astype(np.float32)
    return shift


# --- one patient: geometry --------------------------------------------------------------

@dataclass
class _Grid:
    """Pixel coordinates in the head frame, over the bounding box of the head."""

    rows: slice
    cols: slice
    x: np.ndarray
    y: np.ndarray
    rho: np.ndarray
    tbin: np.ndarray
    warp: np.ndarray
    texture: np.ndarray
    origin: tuple[float, float]
    step: float

    def window(self, head: _Head, cx: float, cy: float, r: float) -> tuple[slice, slice] | None:
        """Bounding-box pixel window covering a disc (head frame, mm); None if empty."""
        c, s = math.cos(head.angle), math.sin(head.angle)
        col = (head.centre[0] + c * cx - s * cy - self.origin[0]) / head.px
        row = (head.centre[1] + s * cx + c * cy - self.origin[1]) / head.px
        rp = r / head.px + 2
        h, w = self.x.shape
        r0, r1 = max(0, int(row - rp)), min(h, int(row + rp) + 1)
        c0, c1 = max(0, int(col - rp)), min(w, int(col + rp) + 1)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def box(self, head: _Head, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Pixel window covering the head-frame rectangle [x0, x1] x [y0, y1] (mm)."""
        c, s = math.cos(head.angle), math.sin(head.angle)
        xs, ys = np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1])
        col = (head.centre[0] + c * xs - s * ys - self.origin[0]) / head.px
        row = (head.centre[1] + s * xs + c * ys - self.origin[1]) / head.px
        h, w = self.x.shape
        r0, r1 = max(0, int(row.min()) - 1), min(h, int(row.max()) + 2)
        c0, c1 = max(0, int(col.min()) - 1), min(w, int(col.max()) + 2)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def pixel_range(self, head: _Head, radii: np.ndarray, margin: float) -> tuple[slice, slice]:
        """Rows and columns of this grid covering a polar outline (mm) plus a margin."""
        return _pixel_range(head, self.origin, self.x.shape, radii, margin)

    def sub(self, rows: slice, cols: slice) -> _Grid:
        """The part of this grid in ``rows`` x ``cols`` (views, no copies)."""
        step = self.step
        return _Grid(
            slice(self.rows.start + rows.start, self.rows.start + rows.stop),
            slice(self.cols.start + cols.start, self.cols.start + cols.stop),
            self.x[rows, cols], self.y[rows, cols], self.rho[rows, cols],
            self.tbin[rows, cols], self.warp[rows, cols],
            self.texture[rows.start:rows.stop + 64, cols.start:cols.stop + 64],
            (self.origin[0] + cols.start * step, self.origin[1] + rows.start * step), step)


def _pixel_range(head: _Head, origin: tuple[float, float], shape: tuple[int, ...],
                 radii: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Pixel rows and columns (from ``origin``, mm) covering a polar outline plus a margin."""
    c, s = math.cos(head.angle), math.sin(head.angle)
    x, y = (radii + margin) * _COS, (radii + margin) * _SIN
    col = (head.centre[0] + c * x - s * y - origin[0]) / head.px
    row = (head.centre[1] + s * x + c * y - origin[1]) / head.px
    r0, r1 = max(0, int(row.min()) - 1), min(shape[0], int(row.max()) + 2)
    c0, c1 = max(0, int(col.min()) - 1), min(shape[1], int(col.max()) + 2)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _cap(t: float, pad: float = 0.0) -> float:
    """Shrink factor of the head toward the vertex (the vertex is at t = 1 + pad)."""
    if t <= 0.45:
        return 1.0
    u = (t - 0.45) / (0.55 + pad)
    return math.sqrt(max(0.0, 1 - u * u))


def _outline(head: _Head, t: float, extra: np.ndarray | float = 0.0, pad: float = 0.0) -> np.ndarray:
    """Radius (mm) per angle bin of a head surface at level t.

    ``extra`` (mm) is added to the inner-table radius and ``pad`` lifts that surface's
    vertex, so the outer table and the scalp wrap the brain at the top as well.
    """
    q = max(0.0, (0.45 - t) / 0.45)
    a = head.a * (1 - 0.2 * q * q) * (1 + 0.04 * _SIN)
    b = head.b * (1 - 0.08 * q * q)
    r = a * b / np.sqrt((b * _COS) ** 2 + (a * _SIN) ** 2) * head.shape
    return ((r + extra) * _cap(t, pad)).astype(np.float32)


def _layers(head: _Head, t: float, k: int) -> dict[str, np.ndarray | float]:
    """Angular look-up tables of the head's layers for the slab of slice k (centre t)."""
    half = head.dt / 2
    skull = head.skull * (1 + 0.3 * max(0.0, (0.3 - t) / 0.3))
    if head.frontal_sinus and 0.28 < t < 0.42:
        skull = skull + 9 * math.sin(math.pi * (t - 0.28) / 0.14) * np.exp(
            -((_BIN_ANGLE + np.pi / 2) / 0.3) ** 2)
    scalp = head.scalp + 7 * _bump(t, 0.12, 0.62) * np.exp(-(_SIN / 0.45) ** 2)
    frac = head.fracture
    if frac and min(abs(k - j) for j in frac["slices"]) <= 2:
        d = np.angle(np.exp(1j * (_BIN_ANGLE - frac["theta"])))
        scalp = scalp + frac["swelling"] * np.exp(-(d / 0.3) ** 2)
    pad_b, pad_s = float(skull.mean()) / _HEIGHT_MM, float((skull + scalp).mean()) / _HEIGHT_MM
    out = {}
    for name, extra, pad in (("c", 0.0, 0.0), ("b", skull, pad_b), ("s", skull + scalp, pad_s)):
        lo, hi = _outline(head, t - half, extra, pad), _outline(head, t + half, extra, pad)
        out[name] = (lo + hi) / 2
        out["w" + name] = float(np.abs(lo - hi).mean()) + 0.02
    return out


def _bump(t: float, lo: float, hi: float) -> float:
    """0 outside (lo, hi), rising fast to 1 in the middle: the size profile of a structure."""
    if t <= lo or t >= hi:
        return 0.0
    return math.sqrt(math.sin(math.pi * (t - lo) / (hi - lo)))


def _make_grid(head: _Head) -> _Grid:
    """Head-frame coordinates of the pixels in the head's bounding box."""
    size, px = head.size, head.px
    c, s = math.cos(head.angle), math.sin(head.angle)
    radii = np.max([_layers(head, float(t), k)["s"] for k, t in enumerate(head.levels)], axis=0)
    pos = (np.arange(size) - (size - 1) / 2) * px
    rows, cols = _pixel_range(head, (pos[0], pos[0]), (size, size), radii,
                              _MARGIN_MM + _MAX_SWELLING_MM + 2)
    X = (pos[cols][None, :] - head.centre[0]).astype(np.float32)
    Y = (pos[rows][:, None] - head.centre[1]).astype(np.float32)
    x = (c * X + s * Y).astype(np.float32)
    y = (-s * X + c * Y).astype(np.float32)
    theta = np.arctan2(y, x)
    tbin = np.clip(((theta + np.pi) * (_NB / (2 * np.pi))).astype(np.int32), 0, _NB - 1)
    warp = np.exp(-(y / 70) ** 2 - (x / 50) ** 2).astype(np.float32)
    rng = np.random.default_rng([head.seed, 1])
    tex = ndimage.gaussian_filter(rng.standard_normal((x.shape[0] + 64, x.shape[1] + 64),
                                                      dtype=np.float32), 1.2 * 0.45 / px + 0.6)
    tex /= tex.std() + 1e-6
    return _Grid(rows, cols, x, y, np.hypot(x, y), tbin, warp, tex, (float(pos[cols][0]), float(pos[rows][0])), px)


def _ellipse_depth(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float,
                   angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipse's border: positive inside."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    f = (u / a) ** 2 + (v / b) ** 2 - 1
    g = 2 * np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2) + 1e-3
    return -f / g


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a slab inside a surface at signed depth d whose position spans ``width``."""
    f = d * (1.0 / width)
    f += 0.5
    return _clip01(f)


def _soft_ramp(d: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """:func:`_ramp` seen through a slice profile with Gaussian tails (SD ``_SSP_TAIL * width``).

    The ramp convolved with the Gaussian, in closed form: ``(G(d + w/2) - G(d - w/2)) / w``
    with ``G(u) = u Phi(u/s) + s phi(u/s)``.
    """
    w = np.asarray(width, dtype=np.float32)
    s = _SSP_TAIL * w + 0.05

    def g(u: np.ndarray) -> np.ndarray:
        z = u / s
        return u * special.ndtr(z) + s * (0.3989423 * np.exp(-0.5 * z * z))

    return _clip01(((g(d + 0.5 * w) - g(d - 0.5 * w)) / w).astype(np.float32))


def _clip01(a: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (faster than ``np.clip``) and return ``a``."""
    np.maximum(a, 0.0, out=a)
    return np.minimum(a, 1.0, out=a)


# --- one patient: building slices -------------------------------------------------------

@dataclass
class _Slice:
    """One slice's anatomy over the bounding box, kept for painting lesions."""

    k: int
    t: float
    depth: np.ndarray
    cortex: np.ndarray
    tissue: np.ndarray
    xw: np.ndarray


def _build_slices(head: _Head, grid: _Grid,
                  lesions: list[_Lesion]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Noise-free HU and tissue codes for every slice, and each lesion's masks per slice."""
    shape = (head.n, *grid.x.shape)
    clean = np.full(shape, _TISSUE_HU[_T["air"]], dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)
    painted: list[dict] = [{} for _ in lesions]
    for k, t in enumerate(head.levels):
        lay = _layers(head, float(t), k)
        win = grid.pixel_range(head, lay["s"], lay["ws"] + _MARGIN_MM)
        sub = grid.sub(*win)
        sl, hu = _slice_anatomy(head, sub, k, float(t), lay)
        clean[k][win], tissue[k][win] = hu, sl.tissue
        for i, les in enumerate(lesions):
            u = les.u(k)
            if u is None:
                continue
            blood, oedema = _lesion_mask(les, sl, u, head, sub)
            if blood.any():
                painted[i][k] = tuple(None if m is None else _embed(m, win, grid.x.shape)
                                      for m in (blood, oedema))
    return clean, tissue, painted


def _embed(m: np.ndarray, win: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    """A bool array of ``shape`` holding ``m`` at ``win`` and False elsewhere."""
    out = np.zeros(shape, dtype=bool)
    out[win] = m
    return out


def _slice_anatomy(head: _Head, grid: _Grid, k: int, t: float,
                   lay: dict) -> tuple[_Slice, np.ndarray]:
    """One noise-free slice: HU and tissue codes over ``grid``.

    Pixels fully inside the cavity take the brain's HU; the others mix air, scalp, bone
    and brain by the fraction of the slab each layer fills (the partial volume in z).
    """
    d_c = lay["c"][grid.tbin] - grid.rho
    xw = grid.x - head.shift[k] * grid.warp if head.shift is not None else grid.x
    depth, width = _cavity_depth(head, grid, t, d_c, lay["wc"])
    brain, cortex = _brain_tissue(head, grid, xw, t, k, depth, d_c)
    hu = head.hu[brain]
    _calcify(head, grid, xw, t, brain, hu)
    if t < 0.36:
        _beam_hardening(head, grid, t, depth, hu)
    air = d_c < -float((lay["s"] - lay["c"]).max() + lay["ws"] + 1.0)
    hu[air] = _TISSUE_HU[_T["air"]]
    tissue = brain
    tissue[air] = _T["air"]
    depth_flat = depth.ravel()
    reach = (0.5 + 3 * _SSP_TAIL) * width + 0.15
    near = depth < reach
    near &= ~air
    shell = np.flatnonzero(near)
    w_shell = width.ravel()[shell] if isinstance(width, np.ndarray) else width
    _shell(head, grid, k, t, lay, shell, depth_flat[shell], w_shell, hu, tissue)
    if t < 0.42:
        _skull_base(head, grid, t, lay, hu, tissue)
    depth[air] = -1.0
    outside = shell[_code_set(_OUTSIDE_CAVITY)[tissue.ravel()[shell]]]
    depth_flat[outside] = -1.0
    return _Slice(k, t, depth, cortex, tissue, xw), hu


def _beam_hardening(head: _Head, grid: _Grid, t: float, depth: np.ndarray,
                    hu: np.ndarray) -> None:
    """Skull-base artefacts in the brain, in place (none of them is in the masks).

    A bright rim along the bone, a dark bar between the petrous ridges, and the patient's
    streaks across the posterior fossa (:func:`_draw_streaks`), which raise the brain
    into the range of blood where they are bright.
    """
    if t < 0.32:
        hu += head.bh_amp * (1 - t / 0.32) * np.exp(-np.maximum(depth, 0) * (1 / 2.5))
    bar = _bump(t, 0.06, 0.24)
    if bar > 0:
        y_bar = 0.14 * head.b
        win = grid.box(head, -0.7 * head.a, 0.7 * head.a, y_bar - 10, y_bar + 10)
        dy = (grid.y[win] - y_bar) * (1 / 3.5)
        hu[win] -= (0.8 * head.bh_amp * bar) * np.exp(-dy * dy)
    live = [(st, _bump(t, st[6], st[7])) for st in head.streaks]
    live = [(st, f) for st, f in live if f > 0]
    if not live:
        return
    win = grid.box(head, -0.9 * head.a, 0.9 * head.a, -0.15 * head.b, 0.95 * head.b)
    x, y, view = grid.x[win], grid.y[win], hu[win]
    for (x0, y0, angle, across, along, amp, _, _), f in live:
        c, s = math.cos(angle), math.sin(angle)
        u = ((x - x0) * s - (y - y0) * c) * (1 / across)
        v = ((x - x0) * c + (y - y0) * s) * (1 / along)
        view += (amp * f) * np.exp(-0.5 * (u * u + v * v))


def _shell(head: _Head, grid: _Grid, k: int, t: float, lay: dict, idx: np.ndarray,
           depth: np.ndarray, width: np.ndarray | float, hu: np.ndarray,
           tissue: np.ndarray) -> None:
    """Mix air, scalp, bone and brain at the flat pixel indices ``idx``, in place.

    ``width`` (mm) is how far the inner table moves across the slab at each pixel: where
    the slice cuts the skull obliquely (vertex, fossa floors) bone and brain share a
    wide band, with the slice profile's tails adding a little bone beyond it.
    """
    rho, tb = grid.rho.ravel()[idx], grid.tbin.ravel()[idx]
    d_b = lay["b"][tb] - rho
    d_s = lay["s"][tb] - rho
    if t < 0.32:
        d_b = np.minimum(d_b, _skull_base_bone(head, grid, t, depth, idx, tb))
    f_s = _ramp(d_s, lay["ws"])
    f_b = np.minimum(_ramp(d_b, lay["wb"]), f_s)
    f_c = np.minimum(_soft_ramp(depth, width), f_b)
    bone = _bone_hu(head, grid, k, idx, tb, rho, d_b, lay["b"] - lay["c"])
    fat = (d_s > 1.5) & (d_s < 1.5 + head.fat)
    scalp = np.where(fat, head.hu[_T["fat"]], head.hu[_T["skin"]])
    brain_hu = hu.ravel()[idx]
    mixed = -1000.0 + (scalp + 1000.0) * f_s
    mixed += (bone - scalp) * f_b
    mixed += (brain_hu - bone) * f_c
    hu.ravel()[idx] = mixed
    codes = np.where(f_b >= 0.5, _T["bone"], np.where(f_s >= 0.5, np.where(
        fat, _T["fat"], _T["skin"]), _T["air"])).astype(np.uint8)
    tissue.ravel()[idx] = np.where(f_c >= 0.5, tissue.ravel()[idx], codes)


def _cavity_depth(head: _Head, grid: _Grid, t: float, d_c: np.ndarray,
                  wc: float) -> tuple[np.ndarray, np.ndarray | float]:
    """Depth (mm) inside the cranial cavity, and how far its wall moves across the slab.

    Above level 0.32 the cavity is the vault (wall movement ``wc``, one value per slice).
    Below, it is the union of the posterior fossa, the two middle cranial fossae
    (temporal lobes) and the anterior fossa, which grow and merge upward. Their floors
    are also found at the bottom and top of the slab: a slice through a floor gets a
    partial-volume band as wide as the floor moves within it (depths below -6 mm are
    taken as -6 there, so only walls near the slice count).
    """
    if t >= 0.32:
        return d_c, wc
    half = head.dt / 2
    wobble = _wobble(head, t, 2.0, 3, 14)[grid.tbin] * np.minimum(grid.rho * (1 / 40), 1.0)
    depths = []
    for level in (t, t - half, t + half):
        low = np.full(grid.x.shape, -30.0, dtype=np.float32)
        for cx, cy, a, b, angle in _fossae(head, level):
            _max_ellipse(low, grid, head, cx, cy, a, b, angle)
        low += wobble
        depths.append(np.minimum(d_c, low))
    depth, lo, hi = depths
    width = np.abs(np.maximum(hi, -6.0) - np.maximum(lo, -6.0))
    width += wc
    return depth, width


def _wobble(head: _Head, t: float, amp: float, lo: int, hi: int) -> np.ndarray:
    """A smooth random function of angle (mm, SD about ``amp``), fixed for a patient and level."""
    rng = np.random.default_rng([head.seed, 3, int(t * 1e4), lo])
    orders = np.arange(lo, hi + 1)[:, None]
    coef = rng.normal(0, 1, (len(orders), 1)) / np.sqrt(orders)
    wave = (coef * np.cos(orders * _BIN_ANGLE + rng.uniform(0, 2 * np.pi, coef.shape))).sum(0)
    return (amp * wave / (wave.std() + 1e-6)).astype(np.float32)


def _fossae(head: _Head, t: float) -> list[tuple[float, float, float, float, float]]:
    """Ellipses ``(cx, cy, a, b, angle)`` of the cranial fossae at a low level t."""
    a = head.a * (1 - 0.2 * ((0.45 - t) / 0.45) ** 2)
    b = head.b
    grow = 1 + 2.5 * max(0.0, t - 0.24)
    g_pf = (0.7 + 0.3 * min(1.0, t / 0.22)) * grow
    out = [(0.0, 0.44 * b + 0.06 * b * max(0.0, (t - 0.2) / 0.12), 0.74 * a * g_pf,
            0.44 * b * g_pf, 0.0)]
    g_t = min(1.0, max(0.0, (t - 0.03) / 0.14)) ** 0.5 * grow
    if g_t > 0:
        for s in (-1, 1):
            out.append((s * 0.52 * a, -0.18 * b, 0.4 * a * g_t, 0.42 * b * g_t, s * 0.25))
    g_a = min(1.0, max(0.0, (t - 0.16) / 0.08)) ** 0.5 * grow
    if g_a > 0:
        out.append((0.0, -0.5 * b, 0.5 * a * g_a, 0.32 * b * g_a, 0.0))
    g_s = min(1.0, max(0.0, (t - 0.2) / 0.05)) * grow
    if g_s > 0:
        out.append((0.0, -0.1 * b, 0.24 * a * g_s, 0.2 * b * g_s, 0.0))
    return out


def _max_ellipse(out: np.ndarray, grid: _Grid, head: _Head, cx: float, cy: float, a: float,
                 b: float, angle: float = 0.0, margin: float = 12.0) -> None:
    """``out = max(out, ellipse depth)`` within the ellipse's window (plus ``margin`` mm)."""
    win = grid.window(head, cx, cy, max(a, b) + margin)
    if win is not None:
        view = out[win]
        np.maximum(view, _ellipse_depth(grid.x[win], grid.y[win], cx, cy, a, b, angle), out=view)


def _brain_tissue(head: _Head, grid: _Grid, xw: np.ndarray, t: float, k: int,
                  depth: np.ndarray, d_vault: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue codes inside the cavity and the distance to the nearest CSF (mm)."""
    atro = head.atrophy
    sas = 0.5 + 2.2 * atro + (1.0 + 1.5 * atro) * np.exp(-((_BIN_ANGLE + np.pi / 2) / 0.7) ** 2)
    sas_px = sas[grid.tbin]
    pial = depth - sas_px
    pial_vault = pial if depth is d_vault else d_vault - sas_px
    cortex = _sulci(head, grid, k, t, pial, pial_vault)
    _fissures(head, grid, xw, t, cortex)
    brain = np.full(cortex.shape, _T["white"], dtype=np.uint8)
    brain -= (cortex < head.cortex_mm).view(np.uint8) * np.uint8(_T["white"] - _T["grey"])
    brain -= (cortex < 0).view(np.uint8) * np.uint8(_T["grey"] - _T["csf"])
    _falx(head, grid, xw, t, brain)
    _deep_structures(head, grid, xw, t, brain)
    _venous_sinus(head, grid, t, depth, brain)
    return brain, cortex


def _sulci(head: _Head, grid: _Grid, k: int, t: float, pial: np.ndarray,
           pial_vault: np.ndarray) -> np.ndarray:
    """Distance (mm) to the nearest CSF surface: brain surface or a sulcus (negative = CSF).

    Sulci run inward from the convexity (depth measured from the vault, so none appear
    deep in the skull-base fossae) along wavy paths that bend with depth. Each family is
    evaluated only in the band of pixels its sulci can reach.
    """
    dist = pial.copy()
    rng = np.random.default_rng([head.seed, 2, k])
    orders = np.arange(1, 11)[:, None]
    band = np.flatnonzero((pial_vault.ravel() < _sulcus_reach(head, 0)) & (pial.ravel() > -3.0))
    tbin, rho = grid.tbin.ravel()[band], grid.rho.ravel()[band]
    pv, near = pial_vault.ravel()[band], dist.ravel()[band]
    for fam, (n, d_lo, d_hi, half_w) in enumerate(head.sulci):
        pert = (rng.normal(0, 1.6, (10, 1)) / orders * np.cos(
            orders * _BIN_ANGLE + rng.uniform(0, 6.3, (10, 1)))).sum(0)
        bend = (rng.normal(0, 0.06, (4, 1)) * np.cos(
            orders[:4] * _BIN_ANGLE + rng.uniform(0, 6.3, (4, 1)))).sum(0).astype(np.float32)
        phase = (n * _BIN_ANGLE + pert + 0.9 * fam).astype(np.float32)
        count = 2 * n + 64   # sulcus index = round(phase / 2 pi) + n + 32, always in range
        depths = (rng.uniform(d_lo, d_hi, count) * (rng.random(count) > 0.12)).astype(np.float32)
        widths = (half_w * rng.uniform(0.5, 1.5, count)).astype(np.float32)
        wiggle = rng.uniform(0, 6.3)
        if fam:
            sel = np.flatnonzero(pv < _sulcus_reach(head, fam))
            f_tbin, f_rho, f_pv, f_near = tbin[sel], rho[sel], pv[sel], near[sel]
        else:
            f_tbin, f_rho, f_pv, f_near = tbin, rho, pv, near
        phi = phase[f_tbin] + f_pv * bend[f_tbin]
        if not fam:
            phi += 0.45 * np.sin(f_pv * 0.28 + wiggle)
        idx = np.rint(phi * (1 / (2 * np.pi)))
        lat = np.abs(phi - idx * (2 * np.pi))
        lat *= f_rho
        lat *= 1.0 / n
        sid = idx.astype(np.int32)
        sid += n + 32
        below = np.maximum(f_pv - np.take(depths, sid, mode="clip"), 0)
        lat *= lat
        below *= below
        lat += below
        np.sqrt(lat, out=lat)
        lat -= np.take(widths, sid, mode="clip")
        np.minimum(f_near, lat, out=f_near)
        if fam:
            near[sel] = f_near
    if t > 0.68:
        _transverse_sulci(head, grid, rng, t, band, pv, near)
    dist.ravel()[band] = near
    return dist


def _transverse_sulci(head: _Head, grid: _Grid, rng: np.random.Generator, t: float,
                      band: np.ndarray, pv: np.ndarray, near: np.ndarray) -> None:
    """Near the vertex, sulci run across each hemisphere (like the central sulcus), in place."""
    weight = min(1.0, (t - 0.68) / 0.12)
    x, y = grid.x.ravel()[band], grid.y.ravel()[band]
    spacing = rng.uniform(13, 17)
    phase = (y + 3.0 * np.sin(x * 0.09 + rng.uniform(0, 6.3))) * (2 * np.pi / spacing)
    phase += rng.uniform(0, 6.3)
    idx = np.rint(phase * (1 / (2 * np.pi)))
    lat = np.abs(phase - idx * (2 * np.pi)) * (spacing / (2 * np.pi))
    sid = idx.astype(np.int32) + 64
    start = rng.uniform(2, 25, 160).astype(np.float32)
    width = (head.sulci[0][3] * rng.uniform(0.6, 1.4, 160)).astype(np.float32)
    gap = np.maximum(np.take(start, sid, mode="clip") - np.abs(x), 0)
    deep = np.maximum(pv - 22 * weight, 0)
    d = np.sqrt(lat * lat + gap * gap + deep * deep) - np.take(width, sid, mode="clip")
    np.minimum(near, d, out=near)


def _sulcus_reach(head: _Head, fam: int) -> float:
    """How deep (mm below the vault's pia) sulcus family ``fam`` can shape the cortex."""
    _, _, d_hi, half_w = head.sulci[fam]
    return d_hi + 2 * half_w + head.cortex_mm + 0.5


def _fissures(head: _Head, grid: _Grid, xw: np.ndarray, t: float, cortex: np.ndarray) -> None:
    """Cut the interhemispheric and sylvian fissures into the CSF-distance map, in place."""
    kb, atro = head.kb, head.atrophy
    y = grid.y
    half_w = 0.5 + 1.2 * atro
    if t >= 0.18:
        gap = 0.0 if t > 0.64 else (38 * kb if t > 0.34 else 20 * kb)
        reach = float(np.abs(head.shift).max()) + 4 + half_w if head.shift is not None else 8.0
        win = grid.box(head, -reach, reach, -1.3 * head.b, 1.3 * head.b)
        yy, view = y[win], cortex[win]
        mid = np.abs(xw[win] - 1.5 * np.sin(yy * (1 / 40))) - half_w
        mid[(yy >= -gap) & (yy <= gap + (8 * kb if t < 0.34 else 0))] = np.inf
        np.minimum(view, mid, out=view)
    f = _bump(t, 0.24, 0.46)
    if f == 0:
        return
    a = head.a * (1 - 0.2 * max(0.0, (0.45 - t) / 0.45) ** 2)
    b = head.b
    for s in (-1, 1):
        win = grid.window(head, s * 0.75 * a, -0.06 * b, 0.4 * a)
        if win is None:
            continue
        xi = s * (a - 24 * kb)
        stem = _segment_distance(xw[win], y[win], s * (a + 4), -0.12 * b, xi, -0.04 * b)
        cleft = _segment_distance(xw[win], y[win], xi, -0.16 * b, xi + s * 2, 0.1 * b)
        d = np.minimum(stem - (0.8 + 2.2 * atro) * f, cleft - (0.4 + 1.0 * atro) * f)
        view = cortex[win]
        np.minimum(view, d, out=view)


def _falx(head: _Head, grid: _Grid, xw: np.ndarray, t: float, brain: np.ndarray) -> None:
    """The falx: a thin dense dural line in the middle of the interhemispheric fissure."""
    if t < 0.3:
        return
    reach = float(np.abs(head.shift).max()) + 3 if head.shift is not None else 3.0
    win = grid.box(head, -reach, reach, -1.3 * head.b, 1.3 * head.b)
    view = brain[win]
    half = 0.1 + 0.3 * (0.5 + 1.2 * head.atrophy)   # a third of the fissure's half-width
    line = np.abs(xw[win] - 1.5 * np.sin(grid.y[win] * (1 / 40))) < half
    view[line & (view == _T["csf"])] = _T["dura"]


def _segment_distance(x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float,
                      y1: float) -> np.ndarray:
    """Distance (mm) from points to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    u = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - x0 - u * dx, y - y0 - u * dy)


def _paint_ellipse(grid: _Grid, head: _Head, brain: np.ndarray, xw: np.ndarray, code: int,
                   cx: float, cy: float, a: float, b: float, angle: float = 0.0,
                   only: tuple[int, ...] | None = None, ring: float = 0.0) -> None:
    """Set tissue code inside an ellipse (or a ring of width ``ring`` outside it)."""
    if a <= 0.2 or b <= 0.2:
        return
    win = grid.window(head, cx, cy, max(a, b) + ring)
    if win is None:
        return
    d = _ellipse_depth(xw[win], grid.y[win], cx, cy, a, b, angle)
    inside = (d > -ring) & (d <= 0) if ring else d > 0
    view = brain[win]
    if only is not None:
        inside &= _code_set(only)[view]
    view[inside] = code


@functools.lru_cache(maxsize=32)
def _code_set(codes: tuple[int, ...]) -> np.ndarray:
    """A boolean look-up table over tissue codes: True for ``codes`` (shared; do not modify)."""
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


def _deep_structures(head: _Head, grid: _Grid, xw: np.ndarray, t: float,
                     brain: np.ndarray) -> None:
    """Ventricles, deep grey nuclei, brainstem, cisterns and cerebellum, in place."""
    kb, v = head.kb, head.atrophy
    T = _T
    paint = _paint_ellipse
    wm = (T["white"], T["grey"], T["csf"])
    for s in (-1, 1):
        f = _bump(t, 0.38, 0.54)
        paint(grid, head, brain, xw, T["deep_grey"], s * (11 + 3 * v) * kb, -13 * kb, 4.5 * kb * f,
              7.5 * kb * f, s * 0.3, only=wm)
        f = _bump(t, 0.35, 0.5)
        paint(grid, head, brain, xw, T["deep_grey"], s * 22 * kb, -2 * kb, 5.5 * kb * f,
              13 * kb * f, -s * 0.2, only=wm)
        f = _bump(t, 0.34, 0.48)
        paint(grid, head, brain, xw, T["deep_grey"], s * (9 + v) * kb, 9 * kb, 7 * kb * f,
              11 * kb * f, -s * 0.25, only=wm)
        f = _bump(t, 0.26, 0.46)
        a_lvl = head.a * (1 - 0.2 * max(0.0, (0.45 - t) / 0.45) ** 2)
        paint(grid, head, brain, xw, T["grey"], s * (a_lvl - 27 * kb), -3 * kb, 2.4 * f,
              16 * kb * f, 0.0, only=(T["white"],))
    _ventricles(head, grid, xw, t, brain)
    if t < 0.36:
        _posterior_fossa(head, grid, xw, t, brain)


def _ventricles(head: _Head, grid: _Grid, xw: np.ndarray, t: float, brain: np.ndarray) -> None:
    """Lateral, third, temporal-horn and fourth ventricles, and the trigone choroid."""
    kb, v = head.kb, head.atrophy
    g = 1 + 0.9 * v
    vent = _T["ventricle"]
    for s in (-1, 1):
        f = _bump(t, 0.37, 0.57)
        _paint_ellipse(grid, head, brain, xw, vent, s * (5 + 2.5 * v) * kb, -16 * kb,
                       (3.2 + 2.5 * v) * kb * f, (12 + 3 * v) * kb * f, s * 0.45)
        f = _bump(t, 0.48, 0.66)
        _paint_ellipse(grid, head, brain, xw, vent, s * (7 + 3 * v) * kb, 0.0,
                       (3 + 2.5 * v) * kb * f, (25 + 3 * v) * kb * f, -s * 0.08)
        f = _bump(t, 0.38, 0.55)
        cx, cy = s * (15 + 3 * v) * kb, 24 * kb
        _paint_ellipse(grid, head, brain, xw, vent, cx, cy, (4.5 + 2.5 * v) * kb * f,
                       (11 + 3 * v) * kb * f, s * 0.5)
        _paint_ellipse(grid, head, brain, xw, _T["choroid"], cx, cy - 1, 2.2 * kb * f,
                       4 * kb * f, s * 0.5, only=(vent,))
        f = _bump(t, 0.22, 0.36)
        _paint_ellipse(grid, head, brain, xw, vent, s * 0.44 * head.a, -4 * kb, 1.3 * g * f,
                       6 * g * f, s * 0.35)
    f = _bump(t, 0.32, 0.47)
    _paint_ellipse(grid, head, brain, xw, vent, 0.0, 7 * kb, (1.2 + 1.6 * v) * kb * f, 10 * kb * f)


def _posterior_fossa(head: _Head, grid: _Grid, xw: np.ndarray, t: float,
                     brain: np.ndarray) -> None:
    """Cerebellum, brainstem, fourth ventricle and basal cisterns below the tentorium."""
    kb, v = head.kb, head.atrophy
    b = head.b
    pcx, pcy, pa, pb, _ = _fossae(head, t)[0]
    win = grid.window(head, pcx, pcy, max(pa, pb))
    if win is not None:
        x, y = xw[win], grid.y[win]
        d = _ellipse_depth(x, y, pcx, pcy, pa, pb)
        view = brain[win]
        cere = (d > 1.0 + 1.5 * v) & _code_set((_T["grey"], _T["white"], _T["csf"]))[view]
        if t > 0.2:   # the tentorial incisura: a V that narrows and moves back upward
            u = (t - 0.2) / 0.14
            cere &= y > (0.12 + 0.3 * u) * b + np.abs(x) * (0.7 + 2.5 * u)
        else:
            cere &= y > 0.06 * b
        vallecula = (np.abs(x) < 0.7 + v) & (y > pcy + 0.2 * b)
        view[cere] = np.where(vallecula[cere], _T["csf"], _T["cerebellum"])
    if t < 0.22:
        r = 11.5 * kb * (0.75 + 0.25 * min(1.0, t / 0.12))
        py = 0.08 * b
        _paint_ellipse(grid, head, brain, xw, _T["csf"], 0, py - 1.5, r + 0.6 + v,
                       0.9 * r + 1.2 + v)
        _paint_ellipse(grid, head, brain, xw, _T["brainstem"], 0, py, r, r * 0.9)
        f = _bump(t, 0.06, 0.23)
        _paint_ellipse(grid, head, brain, xw, _T["ventricle"], 0, py + r * 0.9 + 2.5,
                       (3 + 2 * v) * f, (2.5 + v) * f)
    elif t < 0.34:
        r = 11 * kb
        my = 0.06 * b
        _paint_ellipse(grid, head, brain, xw, _T["csf"], 0, my, r * 1.1, r, ring=1.0 + 1.2 * v)
        _paint_ellipse(grid, head, brain, xw, _T["brainstem"], 0, my, r * 1.1, r)
        _paint_ellipse(grid, head, brain, xw, _T["csf"], 0, my - 0.85 * r, 2.2, 3.5)
        _paint_ellipse(grid, head, brain, xw, _T["csf"], 0, my - r - 6, 8 * kb, 5 * kb)
        _paint_ellipse(grid, head, brain, xw, _T["csf"], 0, my + r + 2.5, 6 * kb, 2.2 * kb)


def _skull_base_bone(head: _Head, grid: _Grid, t: float, depth: np.ndarray,
                     idx: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Depth (mm) inside the skull-base bone at flat pixels ``idx`` (cavity depth ``depth``).

    Below the vault the skull is not a shell: bone lines the fossae (with petrous ridges
    and the clivus), and the face and neck muscles around it are soft tissue.
    """
    a = head.a * (1 - 0.2 * ((0.45 - t) / 0.45) ** 2)
    b = head.b
    ridge = 6.0 * _bump(t, 0.02, 0.22)
    wall = np.full(grid.x.shape, -30.0, dtype=np.float32)
    if ridge > 0:
        for s in (-1, 1):
            _max_segment(wall, grid, head, (s * 0.14 * a, 0.02 * b), (s * 0.85 * a, 0.26 * b), ridge)
        _max_segment(wall, grid, head, (0.0, -0.2 * b), (0.0, 0.0), ridge)
    thick = 3.5 + 5.5 * np.maximum(_SIN, 0) ** 2 * (1 - t / 0.32)
    thick = np.maximum(thick + _wobble(head, t, 1.2, 2, 9), 2.0).astype(np.float32)
    return np.maximum(wall.ravel()[idx], depth + thick[tb])


def _max_segment(out: np.ndarray, grid: _Grid, head: _Head, p0: tuple[float, float],
                 p1: tuple[float, float], radius: float) -> None:
    """``out = max(out, radius - distance to the segment p0-p1)`` near the segment."""
    cx, cy = (p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2
    win = grid.window(head, cx, cy, math.hypot(p1[0] - cx, p1[1] - cy) + radius + 2)
    if win is not None:
        view = out[win]
        d = radius - _segment_distance(grid.x[win], grid.y[win], *p0, *p1)
        np.maximum(view, d, out=view)


def _calcify(head: _Head, grid: _Grid, xw: np.ndarray, t: float, brain: np.ndarray,
             brain_hu: np.ndarray) -> None:
    """Blend the calcifications that reach this slice's slab into it, in place.

    A pixel takes the share of its slab (in z) that the ellipsoid fills, so small or
    off-centre calcifications look faint (60-150 HU) as they do on 5 mm slices. Pixels
    above 100 HU get the calcification code.
    """
    half = head.dt * _HEIGHT_MM / 2
    zk = t * _HEIGHT_MM
    for _, cx, cy, cz, rx, ry, rz, hu in head.calcs:
        if abs(cz - zk) >= rz + half:
            continue
        win = grid.window(head, cx, cy, max(rx, ry) + 1)
        if win is None:
            continue
        q = 1 - ((xw[win] - cx) * (1 / rx)) ** 2 - ((grid.y[win] - cy) * (1 / ry)) ** 2
        h = rz * np.sqrt(np.maximum(q, 0))
        share = (np.minimum(cz + h, zk + half) - np.maximum(cz - h, zk - half)) * (0.5 / half)
        share = np.maximum(share, 0) * (q > 0)
        view = brain_hu[win]
        view += share * (hu - view)
        brain[win][view > 100] = _T["calcification"]


def _venous_sinus(head: _Head, grid: _Grid, t: float, depth: np.ndarray, brain: np.ndarray) -> None:
    """Dural venous sinuses, dense with flowing blood (mimics; HU set by the haematocrit).

    The superior sagittal sinus is a triangle at the back of the falx; lower down, the
    transverse sinuses run along the occipital bone from the torcula, and the sigmoid
    sinuses curve forward beside the petrous bones.
    """
    if 0.4 < t < 0.92:
        cy = float(np.interp(np.pi / 2, _BIN_ANGLE, _outline(head, t))) - 4
        win = grid.window(head, 0, cy, 12)
        if win is not None:
            d, x = depth[win], grid.x[win]
            tri = (d > 0) & (d < 7) & (np.abs(x) < 0.55 * (7 - d)) & (grid.y[win] > 0)
            brain[win][tri] = _T["venous_sinus"]
    f_tr, f_sg = _bump(t, 0.2, 0.4), _bump(t, 0.05, 0.25)
    if f_tr == 0 and f_sg == 0:
        return
    win = grid.box(head, -1.2 * head.a, 1.2 * head.a, 0.0, 1.3 * head.b)
    d = depth[win]
    off = np.abs(_BIN_ANGLE[grid.tbin[win]] - np.pi / 2)   # 0 straight behind
    band = np.zeros(d.shape, dtype=bool)
    if f_tr > 0:
        band |= (off < 1.1) & (d < (4.0 + 2.0 * (off < 0.25)) * f_tr)
    if f_sg > 0:
        band |= (off > 0.9) & (off < 1.4) & (d < 5.0 * f_sg)
    band &= d > 0
    brain[win][band] = _T["venous_sinus"]


def _bone_hu(head: _Head, grid: _Grid, k: int, idx: np.ndarray, tb: np.ndarray,
             rho: np.ndarray, d_b: np.ndarray, thick: np.ndarray) -> np.ndarray:
    """Skull HU at flat pixels ``idx``: dense tables, a textured diploe, any fracture line."""
    u = d_b / np.maximum(thick[tb], 1.0)
    diploe = _clip01(1 - ((u - 0.5) * (1 / 0.3)) ** 2)
    h, w = grid.x.shape
    o1, o2 = (k * 7) % 60, (k * 13) % 60
    tex = grid.texture[o1:o1 + h, o2:o2 + w].ravel()[idx]
    hu = 1650 - 850 * diploe + tex * (80 + 120 * diploe)
    frac = head.fracture
    if frac and k in frac["slices"]:
        ang = np.angle(np.exp(1j * (_BIN_ANGLE - frac["theta"]))).astype(np.float32)
        arc = np.abs(ang[tb] + frac["tilt"] * np.sin(d_b * 0.5)) * rho
        hu = np.where((arc < max(0.6, 0.55 * head.px)) & (d_b > 0), 45.0, hu)
    return hu.astype(np.float32, copy=False)


def _skull_base(head: _Head, grid: _Grid, t: float, lay: dict, hu: np.ndarray,
                tissue: np.ndarray) -> None:
    """Orbits, paranasal sinuses and mastoid air cells outside the cavity, in place."""
    allowed = _code_set((_T["skin"], _T["fat"], _T["bone"]))[tissue]
    for code, value, ellipse, cells in _face_structures(head, t, lay):
        _put_structure(head, grid, hu, tissue, allowed, code, value, ellipse, cells)


def _face_structures(head: _Head, t: float, lay: dict
                     ) -> list[tuple[int, float, tuple[float, ...], float]]:
    """``(code, HU, (cx, cy, a, b, angle), cells)`` of the structures around the skull base.

    ``cells`` > 0 makes a honeycomb of air cells with bony septa (spatial frequency, 1/mm).
    """
    front = float(np.interp(-np.pi / 2, _BIN_ANGLE, lay["s"]))
    side = float(np.interp(0.0, _BIN_ANGLE, lay["s"]))
    ox, oy = lay["s"] * _COS, lay["s"] * _SIN
    anterior = oy < 0
    air, hu = _T["sinus_air"], head.hu
    out = []
    for s in (-1, 1):
        g, gl = _bump(t, 0.05, 0.25), _bump(t, 0.11, 0.19)
        gx = s * 31.0 * head.kb
        gy = float(oy[anterior][np.argmin(np.abs(ox[anterior] - gx))]) + 14
        out += [(_T["fat"], hu[_T["fat"]], (gx * 0.85, gy + 17, 9 * g, 17 * g, -s * 0.35), 0.0),
                (_T["globe"], hu[_T["globe"]], (gx, gy, 12 * g, 11.5 * g, 0.0), 0.0),
                (_T["lens"], hu[_T["lens"]], (gx, gy - 8.5 * g, 4 * gl, 1.8 * gl, 0.0), 0.0)]
        m, ms = _bump(t, 0.03, 0.21), _bump(t, -0.1, 0.1)
        out += [(air, -950.0, (s * 0.8 * side, 0.15 * head.b, 9 * m, 12 * m, 0.0), 1.1),
                (air, -950.0, (s * 17, -(front - 32), 13 * ms, 15 * ms, 0.0), 0.0)]
    e, sp = _bump(t, 0.03, 0.23), _bump(t, 0.07, 0.2)
    out += [(air, -950.0, (0.0, -(front - 30), 8 * e, 20 * e, 0.0), 1.3),
            (air, -950.0, (0.0, -(front - 62), 13 * sp, 9 * sp, 0.0), 0.25)]
    if head.frontal_sinus:
        fs = _bump(t, 0.29, 0.41)
        rc = float(np.interp(-np.pi / 2, _BIN_ANGLE, lay["c"]))
        rb = float(np.interp(-np.pi / 2, _BIN_ANGLE, lay["b"]))
        half = max(0.0, (rb - rc) / 2 - 1.5)
        out.append((air, -950.0, (0.0, -(rc + rb) / 2, 14 * fs, half * fs, 0.0), 0.0))
    return out


def _put_structure(head: _Head, grid: _Grid, hu: np.ndarray, tissue: np.ndarray,
                   allowed: np.ndarray, code: int, value: float, ellipse: tuple[float, ...],
                   cells: float) -> None:
    """Paint one ellipse of tissue ``code`` (HU ``value``) over ``allowed`` pixels, in place."""
    cx, cy, a, b, angle = ellipse
    if a <= 0.3 or b <= 0.3:
        return
    win = grid.window(head, cx, cy, max(a, b))
    if win is None:
        return
    x, y = grid.x[win], grid.y[win]
    m = (_ellipse_depth(x, y, cx, cy, a, b, angle) > 0) & allowed[win]
    if cells:
        tex = grid.texture[win][: x.shape[0], : x.shape[1]]
        holes = (np.cos(x * cells) + np.cos((0.5 * x + 0.87 * y) * cells)
                 + np.cos((0.5 * x - 0.87 * y) * cells) + 0.8 * tex) > -0.4
        hu[win][m & ~holes] = 700.0
        tissue[win][m & ~holes] = _T["bone"]
        m &= holes
    hu[win][m] = value
    tissue[win][m] = code


# --- one patient: lesions on slices ------------------------------------------------------

def _lesion_mask(les: _Lesion, sl: _Slice, u: float, head: _Head,
                 grid: _Grid) -> tuple[np.ndarray, np.ndarray | None]:
    """(blood mask, oedema mask or None) of one lesion on one slice, over ``grid``."""
    p = les.params
    prof_z = math.sqrt(1 - u * u)
    if les.subtype in ("epidural", "subdural"):
        h = p["h"] * prof_z
        alpha = p["alpha"] * prof_z ** 0.5
        thetas = [p["theta"]] + ([math.pi - p["theta"]] if p.get("bilateral") else [])
        prof = np.zeros(_NB, dtype=np.float32)
        for th in thetas:
            d = np.angle(np.exp(1j * (_BIN_ANGLE - th)))
            prof = np.maximum(prof, h * np.clip(1 - (d / alpha) ** 2, 0, None) ** p["power"])
        return (sl.depth > 0) & (sl.depth < prof[grid.tbin]), None
    if les.subtype == "subarachnoid":
        return _sah_mask(les, sl, prof_z, head, grid), None
    if les.subtype == "intraparenchymal":
        return _iph_mask(les, sl, prof_z, head, grid)
    return _ivh_mask(les, sl, head, grid), None


def _sah_mask(les: _Lesion, sl: _Slice, prof_z: float, head: _Head, grid: _Grid) -> np.ndarray:
    """Blood replacing the CSF (and the cortex edge next to it) within a ball."""
    p = les.params
    if "theta" in p:
        r_in = float(np.interp(p["theta"], _BIN_ANGLE, _outline(head, sl.t)))
        cx, cy = (r_in - 6) * math.cos(p["theta"]), (r_in - 6) * math.sin(p["theta"])
    else:
        cx, cy = p["x"], p["y"]
    r = p["r"] * max(prof_z, 0.4)
    near = (grid.x - cx) ** 2 + (grid.y - cy) ** 2 < r * r
    csf = (sl.tissue == _T["csf"]) | ((sl.cortex < 0.6) & _code_set(_PARENCHYMA)[sl.tissue])
    return near & csf & (sl.depth > 0.3)


def _iph_mask(les: _Lesion, sl: _Slice, prof_z: float, head: _Head,
              grid: _Grid) -> tuple[np.ndarray, np.ndarray | None]:
    """An irregular clot in the parenchyma, and the oedema ring around it."""
    p = les.params
    r = p["r"] * prof_z
    out = np.zeros(grid.x.shape, dtype=bool)
    oed = np.zeros(grid.x.shape, dtype=bool)
    win = grid.window(head, p["x"], p["y"], 1.4 * r + p["oedema"] + 2)
    if win is None:
        return out, None
    dx, dy = sl.xw[win] - p["x"], grid.y[win] - p["y"]
    phi = np.arctan2(dy, dx)
    bound = r * (1 + (p["amp"][:, None, None] * np.cos(
        p["j"][:, None, None] * phi + p["phase"][:, None, None])).sum(0))
    dist = np.hypot(dx, dy)
    tissue_ok = _code_set(_PARENCHYMA)[sl.tissue[win]] & (sl.depth[win] > 0)
    out[win] = (dist < np.maximum(bound, 0.6 * head.px)) & tissue_ok
    if p["oedema"] > 0:
        oed[win] = (dist < bound + p["oedema"] * prof_z ** 0.5) & tissue_ok & ~out[win]
    return out, oed


def _ivh_mask(les: _Lesion, sl: _Slice, head: _Head, grid: _Grid) -> np.ndarray:
    """Blood in the ventricles: a cast of one side, or a level in the occipital horns.

    The level is horizontal in the image (gravity, patient supine), not in the head frame.
    """
    p = les.params
    vent = sl.tissue == _T["ventricle"]
    vent |= sl.tissue == _T["choroid"]
    if p["mode"] == "cast":
        return vent & (sl.xw * p["side"] > -1.0) & (sl.depth > 0)
    post = vent & (grid.y > 12 * head.kb) & (sl.depth > 0)
    rows = np.nonzero(post.any(axis=1))[0]
    if rows.size == 0:
        return post
    level = rows[-1] - p["depth"] / head.px
    return post & (np.arange(post.shape[0])[:, None] >= level)


def _longest_run(ks: list[int]) -> list[int]:
    """The longest run of consecutive integers in sorted ``ks`` (first one on ties)."""
    best: list[int] = []
    run: list[int] = []
    for k in sorted(ks):
        run = run + [k] if run and k == run[-1] + 1 else [k]
        if len(run) > len(best):
            best = run
    return best


def _paint_oedema(clean: np.ndarray, painted: list[dict], head: _Head) -> None:
    """Keep each lesion's longest run of slices, and paint its oedema into ``clean``."""
    for per_slice in painted:
        keep = _longest_run(list(per_slice))
        for k in list(per_slice):
            if k not in keep:
                del per_slice[k]
        for k, (_, oed) in per_slice.items():
            if oed is not None:
                clean[k][oed] = head.hu[_T["white"]] - 8.0


def _paint_blood(clean: np.ndarray, painted: list[dict], lesions: list[_Lesion],
                 grid: _Grid, head: _Head) -> dict[str, np.ndarray]:
    """Paint each lesion's blood into ``clean`` (in place); return bbox masks per subtype.

    The masks are exactly the painted voxels, whatever the blood's age.
    """
    masks: dict[str, np.ndarray] = {}
    h, w = grid.x.shape
    for les, per_slice in zip(lesions, painted):
        m = masks.setdefault(les.subtype, np.zeros((head.n, h, w), dtype=bool))
        level = _fluid_level(les, per_slice)
        for k, (blood, _) in per_slice.items():
            rows, cols = np.nonzero(blood)
            clean[k][rows, cols] = _blood_hu(les, k, rows, cols, grid, head, level)
            m[k] |= blood
    return masks


def _fluid_level(les: _Lesion, per_slice: dict) -> float | None:
    """Grid row of a layering lesion's fluid level (horizontal in the image), else None."""
    if les.age != "layered" or not per_slice:
        return None
    rows = np.concatenate([np.nonzero(b.any(axis=1))[0] for b, _ in per_slice.values()])
    return float(rows.min() + les.look["level"] * (rows.max() - rows.min()))


def _blood_hu(les: _Lesion, k: int, rows: np.ndarray, cols: np.ndarray, grid: _Grid,
              head: _Head, level: float | None) -> np.ndarray:
    """Noise-free HU of a lesion's blood pixels on slice k, each part inside its range."""
    look = les.look
    tex = grid.texture[rows + (k * 11) % 60, cols + (k * 5) % 60]
    part = np.zeros(rows.shape, dtype=bool)   # True: the age's second part (_AGE_PARTS)
    if les.age in ("swirl", "mixed"):
        field_ = _blob_field(look, grid.x[rows, cols], grid.y[rows, cols],
                             k * head.dt * _HEIGHT_MM)
        part = field_ < np.quantile(field_, look["frac"]) if rows.size else part
    elif les.age == "layered":
        part = rows >= level   # dependent (posterior, patient supine) part
    elif les.age == "subacute" and "core" in look:   # intraparenchymal: a shrinking dense core
        p, u = les.params, les.u(k)
        x = grid.x[rows, cols]
        if head.shift is not None:
            x = x - head.shift[k] * grid.warp[rows, cols]
        r = p["r"] * math.sqrt(1 - u * u) if u is not None else p["r"]
        part = np.hypot(x - p["x"], grid.y[rows, cols] - p["y"]) < look["core"] * r
    main, alt = _AGE_PARTS[les.age][0], _AGE_PARTS[les.age][-1]
    base = np.where(part, look[alt], look[main]).astype(np.float32)
    if les.subtype == "intraventricular" and les.params.get("mode") == "layer":
        base += 8.0   # the dependent layer of cells is denser
    lo = np.where(part, _BLOOD_HU[alt][0], _BLOOD_HU[main][0])
    hi = np.where(part, _BLOOD_HU[alt][1], _BLOOD_HU[main][1])
    return np.clip(base + 3.5 * tex, lo, hi).astype(np.float32)


def _blob_field(look: dict, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
    """A smooth random field (blobs about ``look['wave']`` mm across) for mixed patterns."""
    w = 2 * np.pi / look["wave"]
    p0, p1, p2 = look["phase"]
    return (np.sin(w * x + p0 + 0.6 * w * z) + np.sin(w * (0.6 * x + 0.8 * y) + p1)
            + np.sin(w * (0.6 * x - 0.8 * y) + p2 - 0.5 * w * z))


# --- one patient: noise, blur, assembly --------------------------------------------------

def _finish(clean: np.ndarray, grid: _Grid, head: _Head, rng: np.random.Generator) -> np.ndarray:
    """Full-size slices with noise and partial-volume blur, clipped to the CT range.

    Inside the head's box, fresh uniform noise is blurred with the image, which makes it
    Gaussian-like and grainy like CT noise with an SD of ``head.noise_sd``. The air
    around the box gets plain noise of the same SD, cut per slice from one shared field.
    """
    size = head.size
    kernel = np.exp(-0.5 * (np.arange(-2, 3) / BLUR_PX) ** 2).astype(np.float32)
    kernel /= kernel.sum()
    gain = head.noise_sd * math.sqrt(12) / float((kernel ** 2).sum())
    air = rng.random((size + 32, size + 32), dtype=np.float32)
    air -= 0.5
    air *= head.noise_sd * math.sqrt(12)
    air += _TISSUE_HU[_T["air"]]
    hu = np.empty((head.n, size, size), dtype=np.float32)
    box = np.empty(grid.x.shape, dtype=np.float32)
    for k in range(head.n):
        out = hu[k]
        o1, o2 = (k * 7) % 32, (k * 13) % 32
        out[:] = air[o1:o1 + size, o2:o2 + size]
        rng.random(box.shape, dtype=np.float32, out=box)
        box -= 0.5
        box *= gain
        box += clean[k]
        ndimage.correlate1d(box, kernel, axis=0, output=box, mode="nearest")
        ndimage.correlate1d(box, kernel, axis=1, output=out[grid.rows, grid.cols], mode="nearest")
    np.maximum(hu, -1024.0, out=hu)
    return np.minimum(hu, 3071.0, out=hu)


def _assemble(head: _Head, grid: _Grid, hu: np.ndarray, tissue: np.ndarray,
              masks: dict[str, np.ndarray], lesions: list[_Lesion]) -> Phantom:
    """Full-size masks and tissue map, slice labels derived from the masks, and notes."""
    n, size = head.n, head.size
    full_tissue = np.zeros((n, size, size), dtype=np.uint8)
    full_tissue[:, grid.rows, grid.cols] = tissue
    full_masks = {}
    labels = {s: np.zeros(n, dtype=np.int8) for s in SUBTYPES}
    for sub, m in masks.items():
        if not m.any():
            continue
        full = np.zeros((n, size, size), dtype=bool)
        full[:, grid.rows, grid.cols] = m
        full_masks[sub] = full
        labels[sub] = m.any(axis=(1, 2)).astype(np.int8)
    fracture = np.zeros(n, dtype=np.int8)
    for k in head.fracture.get("slices", []):
        fracture[k] = 1
    notes = [les.note for les in lesions if les.subtype in full_masks]
    if head.fracture:
        notes.append("skull fracture")
    return Phantom(hu=hu, masks=full_masks, slice_labels=labels, fracture=fracture,
                   tissue=full_tissue, spacing=(SLICE_MM, head.px, head.px), age=head.age,
                   sex=head.sex, notes=notes)
