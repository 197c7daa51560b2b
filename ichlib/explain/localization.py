"""How well do maps point at the bleed? Metrics against hemorrhage masks, and two baselines.

Metrics (maps and masks are ``[H, W]`` or ``[S, H, W]``, maps >= 0):

- **energy in mask**: the share of a map's mass inside the mask,
  ``sum(cam * mask) / sum(cam)``. Invariant to the map's scale, not to an offset.
- **pointing game** (Zhang et al. 2016): is the map's maximum inside the mask dilated by
  ``tolerance_px`` pixels (Euclidean)? When several pixels tie for the maximum, *all*
  of them must be inside, so a flat map cannot score by luck.

Empty cases, explicitly:

- a slice with an empty mask is not scored: its values are NaN, and tables leave it out
  (CT-ICH labels a few slices positive whose mask is empty; they are left out too);
- a map with no mass (all zeros) on a slice with blood scores 0 energy and a pointing
  miss: a method that points nowhere gets no credit.

Baselines, scored with the same metrics:

- :func:`intensity_baseline`: no model, a smoothed indicator of the blood range 50-90 HU;
- :func:`cascading_randomization`: the same model with its weights re-initialised from
  the top down (Adebayo et al. 2018). Maps that survive this are not explaining the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from ichlib.errors import ConfigError
from ichlib.explain.cam import normalize_scan, scan_grad_cam
from ichlib.io.load import load_volume
from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.dataset import prepare_scan, sampled_mask
from ichlib.preprocess.hu import BLOOD_HU
from ichlib.preprocess.resize import resample_volume
from ichlib.preprocess.windowing import resolve_windows

#: Pointing-game tolerance in pixels, as in Zhang et al. (2016); at the model's resolution.
DEFAULT_TOLERANCE_PX = 15

METHOD_TRAINED = "grad-cam"
METHOD_INTENSITY = "intensity 50-90 HU"
METHOD_RANDOMIZED = "grad-cam, randomized model"

#: Columns of :func:`localization_records`.
RECORD_COLUMNS = ("method", "scan_id", "target", "slice_pos", "slice_index", "positive", "subtype",
                  "mass", "mass_in", "energy", "pointing", "peak", "peak_inside")

_TIE = 1e-6


# --- metrics --------------------------------------------------------------------------

def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float | np.ndarray:
    """Share of each slice's map mass inside its mask.

    Args:
        cam: Map ``[H, W]`` or ``[S, H, W]``, values >= 0 (negative values are clipped).
        mask: Boolean mask of the same shape.

    Returns:
        A float for one slice, else float ``[S]``: in [0, 1]; NaN where the mask is
        empty; 0 where the mask is not empty but the map has no mass.
    """
    cam, mask, single = _pair(cam, mask)
    mass = cam.sum(axis=(1, 2), dtype=np.float64)
    inside = (cam * mask).sum(axis=(1, 2), dtype=np.float64)
    out = np.where(mass > 0, inside / np.where(mass > 0, mass, 1.0), 0.0)
    out[~mask.any(axis=(1, 2))] = np.nan
    return float(out[0]) if single else out


def scan_energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map mass inside the mask, over the scan's positive slices together.

    ``sum over positive slices of mass inside / sum over positive slices of mass``.
    Slices with an empty mask do not count. NaN if no slice has blood; 0 if the map has
    no mass on the positive slices.
    """
    cam, mask, _ = _pair(cam, mask)
    positive = mask.any(axis=(1, 2))
    if not positive.any():
        return float("nan")
    mass = float(cam[positive].sum(dtype=np.float64))
    return float((cam[positive] * mask[positive]).sum(dtype=np.float64) / mass) if mass > 0 else 0.0


def pointing_game(cam: np.ndarray, mask: np.ndarray,
                  tolerance_px: float = DEFAULT_TOLERANCE_PX) -> float | np.ndarray:
    """Whether each slice's map maximum falls in its mask dilated by ``tolerance_px``.

    Args:
        cam: Map ``[H, W]`` or ``[S, H, W]``.
        mask: Boolean mask of the same shape.
        tolerance_px: Dilation radius in pixels (Euclidean distance to the mask <= this).

    Returns:
        A float for one slice, else float ``[S]``: 1.0 hit, 0.0 miss (also for a map with
        no mass, or one whose tied maxima are not all inside), NaN where the mask is empty.
    """
    cam, mask, single = _pair(cam, mask)
    hits = _maxima_inside(cam, _dilate(mask, tolerance_px)).astype(float)
    hits[~mask.any(axis=(1, 2))] = np.nan
    return float(hits[0]) if single else hits


def scan_pointing_game(cam: np.ndarray, mask: np.ndarray,
                       tolerance_px: float = DEFAULT_TOLERANCE_PX) -> float:
    """Whether the scan-wide maximum of the maps falls in the (in-plane dilated) mask.

    All sampled slices compete, including those without blood, so this rewards maps
    that are brightest on the right slice *and* at the right place. It only makes sense
    for maps normalised across the scan (or un-normalised). NaN if no slice has blood.
    """
    cam, mask, _ = _pair(cam, mask)
    if not mask.any():
        return float("nan")
    peaks = cam.max(axis=(1, 2))
    inside = _maxima_inside(cam, _dilate(mask, tolerance_px))
    return float(_scan_hit(peaks, inside))


# --- baselines ------------------------------------------------------------------------

def intensity_baseline(slices: np.ndarray | torch.Tensor,
                       windows: Sequence[str | tuple[float, float]] | str | None = None, *,
                       hu_range: tuple[float, float] = BLOOD_HU, sigma_px: float = 2.0) -> np.ndarray:
    """A model-free "map": where the slice is in the blood range, smoothed.

    The indicator ``low <= HU <= high`` is smoothed in-plane with a Gaussian of
    ``sigma_px`` pixels and divided by its maximum over the scan, like Grad-CAM's scan
    normalisation (:func:`~ichlib.explain.cam.normalize_scan`); no pixel in range gives zeros.

    Args:
        slices: HU ``[S, H, W]``, or windowed model input ``[S, C, H, W]`` (then give
            ``windows``).
        windows: The windows of the channels of windowed input. One channel whose window
            holds ``hu_range`` without clipping (e.g. ``"subdural"`` or ``"soft"``) is
            mapped back to HU. The brain window (0-80 HU) clips at 80 HU, where bone
            also lands, so it cannot be used: pass HU instead.
        hu_range: ``(low, high)`` in HU.
        sigma_px: Gaussian smoothing in pixels (0 for none).

    Returns:
        float32 ``[S, H, W]`` in [0, 1].
    """
    arr = slices.detach().float().cpu().numpy() if isinstance(slices, torch.Tensor) else np.asarray(slices, dtype=np.float32)
    low, high = hu_range
    if windows is None:
        if arr.ndim != 3:
            raise ConfigError(f"HU input must be [S, H, W], got shape {arr.shape}; for windowed "
                              "[S, C, H, W] input pass windows=")
        hu = arr
    else:
        pairs = resolve_windows(windows)
        if arr.ndim != 4 or arr.shape[1] != len(pairs):
            raise ConfigError(f"windowed input must be [S, C={len(pairs)}, H, W], got shape {arr.shape}")
        usable = [i for i, (c, w) in enumerate(pairs) if c - w / 2 < low and high < c + w / 2]
        if not usable:
            raise ConfigError(f"no window among {pairs} holds {low:g}..{high:g} HU without clipping; "
                              "pass HU slices instead")
        c, w = pairs[usable[0]]
        hu = arr[:, usable[0]] * w + (c - w / 2)
    indicator = ((hu >= low) & (hu <= high)).astype(np.float32)
    if sigma_px > 0:
        indicator = ndimage.gaussian_filter(indicator, sigma=(0, sigma_px, sigma_px), mode="constant")
    return normalize_scan(indicator)


def randomization_stages(model: nn.Module) -> list[str]:
    """The names of the parts :func:`cascading_randomization` re-initialises, top first.

    If the model defines ``randomization_stages()``, that is used. Otherwise: the model's
    children other than ``encoder`` (the scan head, names containing ``scan``, first; then
    recurrent layers; then the slice head, names containing ``slice``; then any other,
    last-registered first), followed by the encoder's children from the last to the
    first, with ``nn.Sequential`` children (ResNet stages) split into their blocks.
    Parts without parameters are skipped.
    """
    custom = getattr(model, "randomization_stages", None)
    if callable(custom):
        return list(custom())

    def rank(item: tuple[int, str, nn.Module]) -> tuple[int, int]:
        order, name, module = item
        lowered = name.lower()
        if "scan" in lowered:
            group = 0
        elif isinstance(module, nn.RNNBase) or any(k in lowered for k in ("lstm", "rnn", "gru")):
            group = 1
        elif "slice" in lowered:
            group = 2
        else:
            group = 3
        return group, -order

    children = [(i, n, m) for i, (n, m) in enumerate(model.named_children())
                if n != "encoder" and _has_params(m)]
    stages = [name for _, name, _ in sorted(children, key=rank)]
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        for name, child in reversed(list(encoder.named_children())):
            if not _has_params(child):
                continue
            if isinstance(child, nn.Sequential):
                stages += [f"encoder.{name}.{b}" for b, block in reversed(list(child.named_children()))
                           if _has_params(block)]
            else:
                stages.append(f"encoder.{name}")
    return stages


def cascading_randomization(model: nn.Module, upto: int | str = "all", *,
                            stages: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with its weights re-initialised from the top down.

    Adebayo et al. (2018), "Sanity checks for saliency maps": re-initialise the top layer,
    then the next, and so on; an explanation that does not change is not explaining the
    trained model. The original model is not touched.

    Args:
        model: The trained model.
        upto: How far down to go: ``"all"``, a number of stages, or a stage name
            (re-initialise the stages before it and it).
        stages: Stage names (dotted module paths), top first; default
            :func:`randomization_stages`.
        seed: Seed for the new weights (the global RNG is left as it was).

    Returns:
        The randomised copy, on the model's device, in the model's train/eval mode. Each
        module's ``reset_parameters()`` is used (BatchNorm also resets its running
        statistics); a parameter of a module without one is drawn from N(0, 0.02^2).
    """
    stages = list(stages) if stages is not None else randomization_stages(model)
    if isinstance(upto, str) and upto != "all":
        if upto not in stages:
            raise ConfigError(f"unknown stage {upto!r}; stages are {', '.join(stages)}")
        chosen = stages[: stages.index(upto) + 1]
    elif upto == "all":
        chosen = stages
    else:
        if not 0 <= int(upto) <= len(stages):
            raise ConfigError(f"upto must be between 0 and {len(stages)}, got {upto}")
        chosen = stages[: int(upto)]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in chosen:
            _reinitialize(clone.get_submodule(name))
    return clone.to(device)


# --- tables ---------------------------------------------------------------------------

def localization_records(method: str, scan_id: str, cam: np.ndarray, mask: np.ndarray,
                         slice_labels: np.ndarray | None = None, *, target: str = "",
                         slice_indices: Sequence[int] | None = None,
                         tolerance_px: float = DEFAULT_TOLERANCE_PX) -> pd.DataFrame:
    """Per-slice scores of one scan's maps, the input of :func:`localization_table`.

    Args:
        method: Name of the method that made the maps (a table row).
        scan_id: The scan (patient) the maps belong to.
        cam: Maps ``[S, H, W]``.
        mask: Boolean masks ``[S, H, W]`` of the same slices.
        slice_labels: Optional ``[S, 6]`` slice labels (columns as LABELS), for the
            per-subtype columns.
        target: The label the maps explain (``""`` for a label-free baseline).
        slice_indices: The slices' 0-based indices in the scan (default ``0..S-1``).
        tolerance_px: Pointing-game tolerance.

    Returns:
        One row per slice: ``method, scan_id, target, slice_pos, slice_index, positive``
        (mask not empty), ``subtype`` (the single subtype labelled on the slice, else
        ``""``), ``mass, mass_in, energy, pointing`` (see :func:`energy_in_mask`,
        :func:`pointing_game`), ``peak`` (the slice's map maximum) and ``peak_inside``
        (all its maxima in the dilated mask).
    """
    cam, mask, _ = _pair(cam, mask)
    n = cam.shape[0]
    positive = mask.any(axis=(1, 2))
    subtype = [""] * n
    if slice_labels is not None:
        lab = np.asarray(slice_labels)
        if lab.shape != (n, len(LABELS)):
            raise ConfigError(f"slice_labels must be [S={n}, {len(LABELS)}], got {lab.shape}")
        sub = lab[:, 1:] > 0.5
        subtype = [SUBTYPES[int(np.argmax(row))] if row.sum() == 1 else "" for row in sub]
    inside = _maxima_inside(cam, _dilate(mask, tolerance_px))
    return pd.DataFrame({
        "method": method,
        "scan_id": str(scan_id),
        "target": target,
        "slice_pos": np.arange(n),
        "slice_index": np.arange(n) if slice_indices is None else np.asarray(slice_indices),
        "positive": positive,
        "subtype": subtype,
        "mass": cam.sum(axis=(1, 2), dtype=np.float64),
        "mass_in": (cam * mask).sum(axis=(1, 2), dtype=np.float64),
        "energy": energy_in_mask(cam, mask),
        "pointing": np.where(positive, inside.astype(float), np.nan),
        "peak": cam.max(axis=(1, 2)).astype(np.float64),
        "peak_inside": inside,
    })


def localization_table(records: pd.DataFrame | Iterable[pd.DataFrame],
                       scan_target: str = "any") -> pd.DataFrame:
    """Summarise :func:`localization_records` per method.

    For every method, the maps for ``scan_target`` are used (a label-free baseline's
    maps, target ``""``, serve every column). Columns:

    - ``n_scans``: scans with blood (a non-empty mask) on at least one sampled slice;
    - ``energy``: mean over those scans of :func:`scan_energy_in_mask`;
    - ``pointing``: mean over those scans of the hit rate over their positive slices;
    - ``pointing_scan``: mean over those scans of :func:`scan_pointing_game`;
    - per subtype ``T``, over the positive slices labelled with exactly one subtype, T:
      ``energy[T]``, ``pointing[T]`` (slice means) and ``n_slices[T]``. The maps for
      target ``T`` are used when the records have them, else those for ``scan_target``.
      Subtype columns appear only when some slice has a single-subtype label.

    Returns:
        One row per method (in order of first appearance); NaN where nothing was scored.
    """
    if not isinstance(records, pd.DataFrame):
        records = pd.concat(list(records), ignore_index=True)
    rows = {}
    with_subtypes = bool((records["subtype"] != "").any()) if len(records) else False
    for method in dict.fromkeys(records["method"]):
        rec = records[records["method"] == method]
        targets = set(rec["target"])
        main = rec[rec["target"] == _pick_target(targets, scan_target, scan_target)]
        per_scan = []
        for _, scan in main.groupby("scan_id", sort=False):
            p = scan[scan["positive"]]
            if p.empty:
                continue
            mass = p["mass"].sum()
            energy = p["mass_in"].sum() / mass if mass > 0 else 0.0
            per_scan.append((energy, p["pointing"].mean(),
                             float(_scan_hit(scan["peak"].to_numpy(), scan["peak_inside"].to_numpy()))))
        row = {"n_scans": len(per_scan)}
        row["energy"], row["pointing"], row["pointing_scan"] = (
            np.mean(np.asarray(per_scan), axis=0) if per_scan else (np.nan,) * 3)
        if with_subtypes:
            for t in SUBTYPES:
                sub_rec = rec[rec["target"] == _pick_target(targets, t, scan_target)]
                sub = sub_rec[sub_rec["positive"] & (sub_rec["subtype"] == t)]
                row[f"energy[{t}]"] = sub["energy"].mean() if len(sub) else np.nan
                row[f"pointing[{t}]"] = sub["pointing"].mean() if len(sub) else np.nan
                row[f"n_slices[{t}]"] = len(sub)
        rows[method] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if table.empty:                       # no records at all: the columns, no rows
        table = pd.DataFrame(columns=["n_scans", "energy", "pointing", "pointing_scan"])
    table.index.name = "method"
    return table


def collect_localization(model: nn.Module, data, patient_ids: Sequence[str], config, *,
                         randomized: nn.Module | None = None, per_subtype: bool = True,
                         tolerance_px: float = DEFAULT_TOLERANCE_PX, seed: int = 0) -> pd.DataFrame:
    """Score the trained model's maps and both baselines on a set of CT-ICH patients.

    For every patient whose sampled slices show blood in the mask: the slices are
    sampled and preprocessed as for prediction; Grad-CAM (scan-normalised) is computed for
    ``any`` and, if ``per_subtype``, for each subtype that is the only one on some sampled
    slice; the same for the randomised model; and the intensity baseline on the resized
    HU. Masks are resized like the images (:func:`~ichlib.preprocess.dataset.sampled_mask`).

    Args:
        model: The trained model.
        data: A :class:`~ichlib.io.tables.CtIchData`.
        patient_ids: Patients to score (e.g. the test split).
        config: The model's :class:`~ichlib.preprocess.dataset.PreprocessConfig`.
        randomized: The randomised model; default ``cascading_randomization(model, "all",
            seed=seed)``.
        per_subtype: Also explain single-subtype slices with their own subtype target.
        tolerance_px: Pointing-game tolerance at ``config.img_size``.
        seed: Seed of the default randomisation.

    Returns:
        The concatenated :func:`localization_records`; pass them to
        :func:`localization_table`.
    """
    if randomized is None:
        randomized = cascading_randomization(model, "all", seed=seed)
    frames = []
    for pid in patient_ids:
        hu = load_volume(data.scans[pid]).hu
        x, idx = prepare_scan(hu, config)
        mask = sampled_mask(data, pid, idx, config.img_size)
        if not mask.any():
            continue
        labels = data.slice_labels(pid)[idx]
        common = {"slice_labels": labels, "slice_indices": idx, "tolerance_px": tolerance_px}
        targets = ["any"]
        if per_subtype:
            single = labels[:, 1:].sum(axis=1) == 1
            targets += [t for j, t in enumerate(SUBTYPES) if (single & (labels[:, 1 + j] > 0.5)).any()]
        for method, net in ((METHOD_TRAINED, model), (METHOD_RANDOMIZED, randomized)):
            for t in targets:
                result = scan_grad_cam(net, x, t, slice_indices=idx)
                frames.append(localization_records(method, pid, result.maps, mask, target=t, **common))
        baseline = intensity_baseline(resample_volume(hu[idx], config.img_size))
        frames.append(localization_records(METHOD_INTENSITY, pid, baseline, mask, **common))
    if not frames:
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    return pd.concat(frames, ignore_index=True)


# --- helpers --------------------------------------------------------------------------

def _pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    cam = np.asarray(cam.detach().cpu() if isinstance(cam, torch.Tensor) else cam, dtype=np.float64)
    mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    if cam.shape != mask.shape:
        raise ConfigError(f"map shape {cam.shape} differs from mask shape {mask.shape}")
    if cam.ndim not in (2, 3):
        raise ConfigError(f"expected [H, W] or [S, H, W], got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ConfigError("the map holds NaN or Inf")
    single = cam.ndim == 2
    if single:
        cam, mask = cam[None], mask[None]
    return np.maximum(cam, 0.0), mask, single


def _dilate(mask: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Each slice's mask grown by ``tolerance_px`` (Euclidean), slice by slice."""
    if tolerance_px < 0:
        raise ConfigError(f"tolerance_px must be >= 0, got {tolerance_px}")
    out = np.zeros_like(mask)
    for k, m in enumerate(mask):
        if m.any():
            out[k] = ndimage.distance_transform_edt(~m) <= tolerance_px
    return out


def _maxima_inside(cam: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per slice: do all pixels tied for the slice's maximum lie in ``region``?"""
    peaks = cam.max(axis=(1, 2), keepdims=True)
    tied = cam >= peaks - _TIE * np.maximum(peaks, 1e-30)
    return ~(tied & ~region).any(axis=(1, 2))


def _scan_hit(peaks: np.ndarray, inside: np.ndarray) -> bool:
    """Scan-level pointing: all slices that reach the scan maximum have their maxima inside."""
    if len(peaks) == 0:
        return False
    top = peaks.max()
    reaching = peaks >= top - _TIE * max(top, 1e-30)
    return bool(np.all(inside[reaching]))


def _pick_target(available: set[str], wanted: str, fallback: str) -> str:
    for t in (wanted, fallback, ""):
        if t in available:
            return t
    return sorted(available)[0] if available else ""


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


@torch.no_grad()
def _reinitialize(module: nn.Module) -> None:
    covered: set[int] = set()
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in sub.parameters(recurse=False))
            if isinstance(sub, nn.RNNBase):
                covered.update(id(p) for p in sub.parameters())
    for p in module.parameters():
        if id(p) not in covered:
            p.normal_(0.0, 0.02)
