"""The phantom's head: its parameters per patient (size, shape, tissues, age, calcifications,
streaks), the tissue codes and their HU, and the geometry of the pixel grid in mm.

See :mod:`ichlib.synthetic.phantom` for the model and the sources of every range.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

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


_NB = 2048                       # angle bins of the polar look-up tables


_BIN_ANGLE = ((np.arange(_NB) + 0.5) * (2 * np.pi / _NB) - np.pi).astype(np.float32)
_COS, _SIN = np.cos(_BIN_ANGLE), np.sin(_BIN_ANGLE)


_MARGIN_MM = 4.0                 # air kept around the head for the blur


_HEIGHT_MM = 130.0               # skull base to vertex, for the caps of the outer layers


_SSP_TAIL = 0.4                  # tails of the slice profile, as a share of the wall's movement
#: Largest subgaleal swelling over a fracture, in mm (the head box leaves room for it).
_MAX_SWELLING_MM = 10.0


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


def _draw_head(rng: np.random.Generator, size: int, n_slices: int,
               calcifications: Collection[str] | None = None) -> _Head:
    """Draw one patient's anatomy parameters (``calcifications``: force exactly these kinds)."""
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
        calcs=_draw_calcifications(rng, age, a / 66.0, atrophy, calcifications),
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


def _draw_calcifications(rng: np.random.Generator, age: int, kb: float, atrophy: float,
                         forced: Collection[str] | None = None
                         ) -> list[tuple[str, float, float, float, float, float, float, float]]:
    """Physiological calcifications (not hemorrhage), as clusters of ellipsoids.

    Each is ``(kind, x, y, z, rx, ry, rz, HU)``: centre in the head frame and height above
    the skull base (mm), semi-axes (mm), and the density of the calcified tissue itself.
    A slice shows it averaged over its slab (:func:`_calcify`).
    """
    prev = _calcification_prevalence(age)
    if forced is not None:  # exactly these kinds (for figures and tests)
        prev = {kind: float(kind in forced) for kind in prev}
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
