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

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ichlib.errors import ConfigError
from ichlib.labels import SUBTYPES
from ichlib.synthetic.anatomy import _slice_anatomy
from ichlib.synthetic.head import (
    _MARGIN_MM,
    _T,
    _TISSUE_HU,
    BLUR_PX,
    SLICE_MM,
    _draw_head,
    _Grid,
    _Head,
    _layers,
    _make_grid,
)
from ichlib.synthetic.lesions import (
    _LESION_TRIES,
    _draw_fracture,
    _draw_lesion,
    _Lesion,
    _lesion_mask,
    _midline_shift,
    _paint_blood,
    _paint_oedema,
)

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






def make_phantom(rng: np.random.Generator, size: int = 512, n_slices: int = 36,
                 subtypes: Sequence[str] = (), ages: Mapping[str, str] | None = None,
                 calcifications: Collection[str] | None = None) -> Phantom:
    """Make one synthetic patient in memory.

    Args:
        rng: The only source of randomness; the same state gives the same phantom.
        size: In-plane size in pixels; the pixel size scales so the head keeps its size in mm.
        n_slices: Slices from skull base to vertex.
        subtypes: Hemorrhage subtypes to draw (names from :data:`~ichlib.labels.SUBTYPES`),
            one lesion each; empty for a normal scan.
        ages: Force the blood age of some subtypes (``{"subdural": "chronic"}``; ages:
            acute, swirl, subacute, chronic, mixed, layered); the others are drawn.
        calcifications: Force exactly these calcifications (``"choroid"``, ``"pineal"``,
            ``"falx"``, ``"basal_ganglia"``; empty for none); None draws them by age.

    Raises:
        ConfigError: For an unknown subtype, ``size < 32`` or ``n_slices < 8``.
    """
    unknown = sorted(set(subtypes) - set(SUBTYPES))
    if unknown:
        raise ConfigError(f"unknown subtype(s) {unknown}; expected some of {', '.join(SUBTYPES)}")
    if size < 32 or n_slices < 8:
        raise ConfigError(f"need size >= 32 and n_slices >= 8, got {size} and {n_slices}")
    head = _draw_head(rng, size, n_slices, calcifications)
    grid = _make_grid(head)
    wanted = [s for s in SUBTYPES if s in set(subtypes)]
    for _ in range(_LESION_TRIES):   # redraw when a lesion missed its tissue on every slice
        lesions = [_draw_lesion(rng, head, s, (ages or {}).get(s)) for s in wanted]
        _draw_fracture(rng, head, lesions)
        head.shift = _midline_shift(head, lesions)
        clean, tissue, painted = _build_slices(head, grid, lesions)
        if all(painted):
            break
    _paint_oedema(clean, painted, head)
    masks = _paint_blood(clean, painted, lesions, grid, head)
    hu = _finish(clean, grid, head, rng)
    return _assemble(head, grid, hu, tissue, masks, lesions)




# --- the dataset folder -----------------------------------------------------------------























# --- one patient: parameters ------------------------------------------------------------















# --- one patient: lesions ---------------------------------------------------------------

























# --- one patient: geometry --------------------------------------------------------------























# --- one patient: building slices -------------------------------------------------------



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
























































# --- one patient: lesions on slices ------------------------------------------------------





















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
