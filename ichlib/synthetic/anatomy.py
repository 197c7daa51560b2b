"""One slice of the phantom's anatomy, noise-free: scalp, skull, brain with its sulci,
ventricles and deep structures, the posterior fossa, calcifications, sinuses and artefacts."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ichlib.synthetic.head import (
    _BIN_ANGLE,
    _COS,
    _HEIGHT_MM,
    _OUTSIDE_CAVITY,
    _SIN,
    _SSP_TAIL,
    _T,
    _TISSUE_HU,
    _bump,
    _clip01,
    _ellipse_depth,
    _Grid,
    _Head,
    _outline,
    _ramp,
    _soft_ramp,
)


@dataclass
class _Slice:
    """One slice's anatomy over the bounding box, kept for painting lesions."""

    k: int
    t: float
    depth: np.ndarray
    cortex: np.ndarray
    tissue: np.ndarray
    xw: np.ndarray


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
