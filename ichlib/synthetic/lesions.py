"""The phantom's hemorrhages: one 3D lesion per subtype and patient (shape, place, age and
density), their masks on each slice, and painting the blood and oedema into the image."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ichlib.errors import ConfigError
from ichlib.synthetic.anatomy import _code_set, _Slice
from ichlib.synthetic.head import (
    _BIN_ANGLE,
    _HEIGHT_MM,
    _MAX_SWELLING_MM,
    _NB,
    _PARENCHYMA,
    _T,
    SLICE_MM,
    _Grid,
    _Head,
    _outline,
)

_LESION_TRIES = 4




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


#: Every blood age the phantom draws.
_BLOOD_AGES = ("acute", "swirl", "subacute", "chronic", "mixed", "layered")
_AGE_WORD = {"acute": "acute", "swirl": "hyperacute (swirl)", "subacute": "subacute",
             "chronic": "chronic", "mixed": "acute-on-chronic", "layered": "layering"}


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


def _draw_lesion(rng: np.random.Generator, head: _Head, subtype: str, age: str | None = None) -> _Lesion:
    """Draw one lesion of ``subtype`` with a varied size, place, age and density.

    A quarter of the acute ones are faint (50-60 HU); fresh clot is denser with a higher
    haematocrit. Sizes run from a few voxels to large. The age is drawn from
    :data:`_AGE_MIX` (the draw is made also when ``age`` forces one, so the other draws stay).
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
    if age is not None:
        if age not in _BLOOD_AGES:
            raise ConfigError(f"unknown blood age {age!r}; choose one of {', '.join(_BLOOD_AGES)}")
        les.age = age
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
