"""Does the explanation point at the blood? Grad-CAM against the masks, bracketed by baselines.

For every patient with blood in its mask, every slice is explained
(:func:`~ichlib.explain.cam.whole_scan_grad_cam`), the maps are brought to the mask's own grid
and scored on every slice with blood (:mod:`ichlib.explain.scores`: energy in mask, the
pointing game at 0 and 5 mm, Dice). Beside each CAM on the same slices:

- **chance prior** (:func:`~ichlib.explain.baselines.chance_prior`): brain occupancy at the
  CAM's own grid; it knows the anatomy and no model;
- **randomised model** (:func:`~ichlib.explain.randomization.cascading_randomization`): the same
  CAM on the model with re-initialised weights, a sanity check (it is not chance level: it
  keeps the architecture's bias toward structure); scored for ``"any"`` only, to save time;
- **intensity map** (:func:`~ichlib.explain.baselines.intensity_map`): the acute-blood HU band
  inside the skull, an upper reference that needs no learning (on acute blood).

A label's maps are scored on the slices labelled with it; ``"any"`` on every slice with
blood. Energy is scored twice: over the whole slice, and inside the brain
(:func:`~ichlib.explain.scores.slice_scores`), where every map is restricted to the
intracranial mask, the chance prior included. :func:`localization_table` gives one row per method and label with bootstrap
intervals over patients; :func:`compare_cams` scores several CAM methods and layers on the
validation split, where the default is picked (never on test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ichlib.explain.baselines import chance_prior, intensity_map
from ichlib.explain.cam import CANDIDATES, DEFAULT_CAM, CamSpec, whole_scan_grad_cam
from ichlib.explain.randomization import cascading_randomization
from ichlib.explain.scores import (
    DICE_THRESHOLDS,
    TOLERANCES_MM,
    choose_dice_threshold,
    pointing_column,
    score_table,
    slice_scores,
    to_grid,
)
from ichlib.io.load import load_mask, load_volume
from ichlib.io.tables import CtIchData
from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.dataset import PreprocessConfig, prepare_scan
from ichlib.preprocess.hu import intracranial_mask
from ichlib.preprocess.sampling import covering_indices

METHOD_CHANCE = "chance prior (brain occupancy)"
METHOD_RANDOMIZED = "randomised model"
METHOD_INTENSITY = "intensity map (intracranial 50-90 HU)"


def collect_localization(model: nn.Module, data: CtIchData, patient_ids: Sequence[str],
                         config: PreprocessConfig, cams: Sequence[CamSpec] = (DEFAULT_CAM,), *,
                         labels: Sequence[str] = LABELS, baselines: bool = True,
                         randomized: nn.Module | None = None, seed: int = 0) -> pd.DataFrame:
    """Score the CAMs (and the baselines) on every slice with blood of the given patients.

    Args:
        model: The trained model.
        data: The dataset (it needs masks).
        patient_ids: Patients to score (e.g. the test split); those without blood are skipped.
        config: The model's preprocessing.
        cams: The CAMs to score; each is a row of the tables under its :attr:`CamSpec.name`.
        labels: Labels to explain where the scan has them (``"any"`` on every positive scan).
        baselines: Also score the chance prior, the intensity map and, with the first CAM
            and for ``"any"``, the randomised model.
        randomized: The randomised model (default: all weights re-initialised, ``seed``).
        seed: Seed of the default randomisation.

    Returns:
        One row per (method, label, slice with blood): ``method``, ``label``, ``patient_id``,
        ``slice_index`` and the :func:`~ichlib.explain.scores.slice_scores` columns.
    """
    if baselines and randomized is None:
        randomized = cascading_randomization(model, "all", seed=seed)
    frames = []
    for pid in patient_ids:
        scan = _ScanToScore.read(data, pid, config)
        if scan is None:
            continue
        for label in [lab for lab in labels if scan.has(lab)]:
            for spec in cams:
                frames.append(scan.score(spec.name, label, scan.cam_maps(model, label, spec)))
            if baselines:
                if label == "any":
                    frames.append(scan.score(METHOD_RANDOMIZED, label, scan.cam_maps(randomized, label, cams[0])))
                frames += [scan.score(METHOD_CHANCE, label, scan.chance_maps()),
                           scan.score(METHOD_INTENSITY, label, scan.intensity_maps())]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_COLUMNS)


def localization_table(records: pd.DataFrame, dice_thresholds: Mapping[str, float] | float | None = None,
                       n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per method and label: pooled scores with bootstrap intervals over patients.

    ``dice_thresholds`` come from validation (:func:`choose_dice_threshold`); None picks
    them on ``records`` themselves, which is only fair for validation records.
    """
    if records.empty:
        return pd.DataFrame(columns=["method", "label", "n_patients", "n_slices"])
    thresholds = choose_dice_threshold(records) if dice_thresholds is None else dice_thresholds
    return score_table(records, thresholds, n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class CamComparison:
    """What :func:`compare_cams` found on validation.

    Attributes:
        table: One row per candidate (best first), then the references, with the scores of
            :func:`localization_table` and the ``margin`` over the chance prior.
        chosen: The candidate to use on test.
        dice_thresholds: The Dice threshold of every method, chosen on these validation slices
            (pass it to :func:`localization_table` for the test records).
    """

    table: pd.DataFrame
    chosen: CamSpec
    dice_thresholds: dict[str, float]


def compare_cams(model: nn.Module, data: CtIchData, val_ids: Sequence[str], config: PreprocessConfig,
                 candidates: Sequence[CamSpec] = CANDIDATES, label: str = "any", baselines: bool = True,
                 n_boot: int = 200, seed: int = 0) -> CamComparison:
    """Score every candidate CAM on the validation split and pick the default.

    With ``baselines``, the chance prior, the randomised model (under the first candidate)
    and the intensity map are scored on the same slices: their rows follow the candidates',
    and their Dice thresholds are chosen here too, so a test table can use them all. The
    default is then the candidate whose *weaker* margin over the chance prior is largest
    (column ``margin``): the smaller of its pointing game at 0 mm and its energy in the mask
    (inside the brain) as multiples of the prior's, the targets
    :func:`localization_verdict` judges together. A prior that points at the blood on none of
    these slices counts as pointing on one of them, so the ratio stays finite. Without
    baselines the default has the highest pointing game (ties: higher energy).

    Returns:
        A :class:`CamComparison`: the table (candidates best first, then the baselines), the
        chosen :class:`CamSpec`, and the Dice threshold of every method, chosen on these
        validation records.
    """
    records = collect_localization(model, data, val_ids, config, candidates, labels=(label,),
                                   baselines=baselines, seed=seed)
    thresholds = choose_dice_threshold(records) if len(records) else {}
    table = localization_table(records, thresholds, n_boot=n_boot, seed=seed)
    if table.empty:
        return CamComparison(table, candidates[0], thresholds)
    names = [spec.name for spec in candidates]
    table = table.assign(_candidate=table["method"].isin(names))
    order = ["_candidate", pointing_column(0.0), "energy"]
    if METHOD_CHANCE in set(table["method"]):
        table["margin"] = _margin_over_chance(table)
        order.insert(1, "margin")
    table = table.sort_values(order, ascending=False, ignore_index=True)
    chosen = next(spec for spec in candidates if spec.name == table["method"].iloc[0])
    return CamComparison(table.drop(columns="_candidate"), chosen, thresholds)


def _margin_over_chance(table: pd.DataFrame) -> pd.Series:
    """Per row: min(pointing at 0 mm, energy) as multiples of the chance prior's (NaN for the
    references). Energy inside the brain when the table has it; the prior's pointing is
    floored at one slice of those scored."""
    chance = table[table["method"] == METHOD_CHANCE].iloc[0]
    energy = "energy_in_brain" if "energy_in_brain" in table else "energy"
    point = pointing_column(0.0)
    floor = 1.0 / max(1, int(chance["n_slices"]))
    ratios = pd.concat([table[point] / max(float(chance[point]), floor),
                        table[energy] / max(float(chance[energy]), 1e-12)], axis=1).min(axis=1)
    return ratios.where(table["_candidate"])


def localization_verdict(table: pd.DataFrame, method: str, label: str = "any",
                         pointing_ratio: float = 2.0, energy_ratio: float = 2.0) -> str:
    """Does ``method`` beat the chance prior by the course's margins? One line per target.

    The targets: the pointing game at 0 mm and the energy in the mask each at least
    ``pointing_ratio`` (``energy_ratio``) × the chance prior's, with the two 95% intervals
    apart (the map's lower bound above the prior's upper bound). Energy is judged inside the
    brain when the table has it (every map restricted to the intracranial mask, the prior
    included); the energy over the whole slice follows on its own line, with the same test.

    Returns:
        Lines ``MET`` / ``NOT MET`` with the numbers, or why there is no verdict.
    """
    rows = table[table["label"] == label].set_index("method") if "label" in table else table.iloc[:0]
    if method not in rows.index or METHOD_CHANCE not in rows.index:
        return f"no verdict: '{label}' has no rows for {method!r} and the chance prior"
    cam, chance = rows.loc[method], rows.loc[METHOD_CHANCE]
    checks = [("pointing game at 0 mm", pointing_column(0.0), pointing_ratio, "target")]
    if "energy_in_brain" in rows and np.isfinite(cam["energy_in_brain"]):
        checks += [("energy in mask, inside the brain", "energy_in_brain", energy_ratio, "target"),
                   ("energy in mask, whole slice", "energy", energy_ratio, "reported, not a target")]
    else:
        checks.append(("energy in mask", "energy", energy_ratio, "target"))
    lines = []
    for what, column, target, role in checks:
        ratio = cam[column] / chance[column] if chance[column] > 0 else np.inf
        apart = cam[f"{column}_ci_low"] > chance[f"{column}_ci_high"]
        met = ratio >= target and apart
        lines.append(f"{what}: {cam[column]:.3f} against chance {chance[column]:.3f} ({ratio:.1f}×, "
                     f"intervals {'apart' if apart else 'overlap'}; ≥ {target:g}× and apart, {role}): "
                     f"{'MET' if met else 'NOT MET'}")
    return "\n".join(lines)


_COLUMNS = ["method", "label", "patient_id", "slice_index", "slice_pos", "energy", "energy_in_brain",
            *[pointing_column(t) for t in TOLERANCES_MM], *[f"dice@{t:g}" for t in DICE_THRESHOLDS]]


@dataclass
class _ScanToScore:
    """One patient's scan read once: HU, mask and intracranial mask on the scan's grid, the model
    input and its covering samplings, the slice labels and the in-plane spacing."""

    patient_id: str
    hu: np.ndarray
    mask: np.ndarray
    brain: np.ndarray
    x: torch.Tensor
    samplings: np.ndarray
    slice_labels: np.ndarray
    spacing: tuple[float, float]
    grid: tuple[int, int] = (0, 0)
    _references: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _grown: dict[str, dict[float, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, data: CtIchData, pid: str, config: PreprocessConfig) -> _ScanToScore | None:
        """The scan of ``pid``, or None when its mask holds no blood."""
        path = data.masks.get(pid)
        mask = load_mask(path) if path is not None else None
        if mask is None or not mask.any():
            return None
        volume = load_volume(data.scans[pid])
        x, _ = prepare_scan(volume.hu, config, np.arange(volume.n_slices))
        return cls(pid, volume.hu, mask, intracranial_mask(volume.hu), x,
                   covering_indices(volume.n_slices, config.seq_len),
                   data.slice_labels(pid), (float(volume.spacing[1]), float(volume.spacing[2])))

    def has(self, label: str) -> bool:
        """Whether some slice with blood in the mask is labelled ``label``."""
        return bool(self._slices(label).any())

    def cam_maps(self, model: nn.Module, label: str, spec: CamSpec) -> np.ndarray:
        """The CAM of ``label`` for every slice, on the model's input grid; remembers its
        native CAM grid for the chance prior."""
        result = whole_scan_grad_cam(model, self.x, self.samplings, label, method=spec.method,
                                     target_layer=list(spec.layers))
        if len(spec.layers) == 1 and self.grid == (0, 0):
            self.grid = tuple(int(s) for s in result.raw.shape[1:])
        return result.maps

    def chance_maps(self) -> np.ndarray:
        """The chance prior at the first single-layer CAM's grid (input / 16 when there is
        none), computed once per scan and grid: it does not depend on the label."""
        grid = self.grid if self.grid != (0, 0) else (self.x.shape[-2] // 16, self.x.shape[-1] // 16)
        key = f"chance {grid}"
        if key not in self._references:
            self._references[key] = chance_prior(self.hu, grid, self.brain)
        return self._references[key]

    def intensity_maps(self) -> np.ndarray:
        """The intensity map of the scan, computed once: it does not depend on the label."""
        if "intensity" not in self._references:
            self._references["intensity"] = intensity_map(self.hu, brain=self.brain)
        return self._references["intensity"]

    def score(self, method: str, label: str, maps: np.ndarray) -> pd.DataFrame:
        """Scores of ``maps`` on the slices labelled ``label`` that have blood in the mask."""
        keep = self._slices(label)
        native = to_grid(maps[keep], self.hu.shape[1:])
        grown = self._grown.setdefault(label, {})  # each label's slices, their masks grown once
        rows = slice_scores(native, self.mask[keep], self.spacing, brain=self.brain[keep], grown=grown)
        rows.insert(0, "slice_index", np.flatnonzero(keep)[rows.pop("slice_pos").to_numpy()])
        return rows.assign(method=method, label=label, patient_id=self.patient_id)

    def _slices(self, label: str) -> np.ndarray:
        blood = self.mask.any(axis=(1, 2))
        if label == "any":
            return blood
        return blood & (self.slice_labels[:, 1 + SUBTYPES.index(label)] > 0.5)
