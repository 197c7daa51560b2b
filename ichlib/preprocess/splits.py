"""Patient-level splits, stratified on every label at once: no patient is ever in two parts.

The labels are multi-label (a patient can have several subtypes), and the rare subtypes
(epidural: a handful of patients in CT-ICH) are the ones a plain split on ``any`` leaves
with no test positive. Every split here uses *iterative stratification* (Sechidis,
Tsoumakas & Vlahavas, "On the stratification of multi-label data", ECML PKDD 2011): the
label with the fewest patients still to place is placed first, each of its patients going
to the part that still needs that label most; patients without any label fill the parts
that still need patients. The random tie-breaks come from ``seed``, so a seed gives one
split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ichlib.errors import ConfigError
from ichlib.labels import LABELS


def iterative_stratification(labels: np.ndarray, sizes: Sequence[float], seed: int = 0) -> np.ndarray:
    """Assign each row of a 0/1 label matrix to one of ``len(sizes)`` parts.

    Args:
        labels: ``[N, L]`` 0/1 labels (a row may have several, or none).
        sizes: Desired rows per part (they are scaled to sum to ``N``).
        seed: Seed of the visiting order and of the tie-breaks.

    Returns:
        ``[N]`` part index of each row.
    """
    y = np.asarray(labels) > 0.5
    if y.ndim != 2:
        raise ConfigError(f"labels must be [N, L], got shape {y.shape}")
    n = y.shape[0]
    desired = np.asarray(sizes, dtype=np.float64)
    if desired.ndim != 1 or desired.size < 1 or (desired < 0).any() or desired.sum() <= 0:
        raise ConfigError(f"part sizes must be non-negative with a positive sum, got {list(sizes)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    y = y[order]
    desired = desired * n / desired.sum()
    per_label = np.outer(y.sum(axis=0), desired / max(n, 1))  # [L, K] still wanted per part
    part = np.full(n, -1)
    while True:
        remaining = part < 0
        counts = y[remaining].sum(axis=0)
        if not counts.any():
            break
        fewest = np.flatnonzero(counts == counts[counts > 0].min())
        label = int(rng.choice(fewest))
        for i in np.flatnonzero(remaining & y[:, label]):
            j = _most_wanted(per_label[label], desired, rng)
            part[i] = j
            per_label[y[i], j] -= 1
            desired[j] -= 1
    for i in np.flatnonzero(part < 0):  # rows without any label
        j = _most_wanted(desired, desired, rng)
        part[i] = j
        desired[j] -= 1
    out = np.empty(n, dtype=int)
    out[order] = part
    return out


def patient_split(patients: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0, stratify: str | Sequence[str] | None = None) -> dict[str, list[str]]:
    """Split patients into train, validation and test, stratified on every label.

    Test gets ``round(n * test_fraction)`` patients and validation
    ``round(n * val_fraction)`` (halves round up), train the rest; each label's positives
    are shared out in the same proportions by :func:`iterative_stratification`.

    Args:
        patients: Table indexed by patient id with 0/1 label columns.
        val_fraction: Share of patients for validation (model selection, thresholds).
        test_fraction: Share held out for the final test, never used for any choice.
        seed: Seed of the split; the same seed gives the same split.
        stratify: Label column(s) to stratify on (default: every column of
            :data:`~ichlib.labels.LABELS` the table has).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of sorted patient ids.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    n = len(patients)
    n_test, n_val = _round_half_up(n * test_fraction), _round_half_up(n * val_fraction)
    names = ("test", "val", "train")
    sizes = [n_test, n_val, max(n - n_test - n_val, 0)]
    return _assign(patients, names, sizes if n else [0, 0, 1], seed, stratify)


def kfold_split(patients: pd.DataFrame, n_folds: int = 5, seed: int = 0,
                stratify: str | Sequence[str] | None = None) -> list[dict[str, list[str]]]:
    """Multi-label stratified k-fold over patients.

    Args:
        patients: Table indexed by patient id with 0/1 label columns.
        n_folds: Number of folds (at least 2, at most the number of patients).
        seed: Seed of the split.
        stratify: Label column(s) (default: every LABELS column the table has).

    Returns:
        One ``{"train": [...], "test": [...]}`` per fold; every patient is in exactly one
        ``test`` list.
    """
    if not 2 <= n_folds <= len(patients):
        raise ConfigError(f"cannot make {n_folds} folds from {len(patients)} patients "
                          "(need 2 <= folds <= patients)")
    names = tuple(str(k) for k in range(n_folds))
    parts = _assign(patients, names, [1.0] * n_folds, seed, stratify)
    everyone = sorted(str(pid) for pid in patients.index)
    return [{"train": sorted(set(everyone) - set(parts[name])), "test": parts[name]} for name in names]


def cv_split(patients: pd.DataFrame, n_folds: int, fold: int, val_fraction: float = 0.15, seed: int = 0,
             group: str | None = None) -> dict[str, list[str]]:
    """One fold of a cross-validation: fold ``fold`` is the test part, and the patients of
    the other folds are split into train and validation (``val_fraction`` of them), both
    stratified on every label.

    Args:
        patients: Table indexed by patient (or series) id with 0/1 label columns.
        n_folds: Folds of the cross-validation.
        fold: Which fold is the test part (0-based).
        val_fraction: Share of the non-test patients used for validation.
        seed: Seed of the folds and of the train / validation split.
        group: Column naming the person of each row (RSNA: ``patient_id_dicom``): the folds
            and the validation split keep each person's rows together.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of sorted ids.
    """
    if not 0 <= fold < n_folds:
        raise ConfigError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    table, members = _grouped(patients, group)
    test_groups = kfold_split(table, n_folds, seed)[fold]["test"]
    rest = table.drop(index=test_groups)
    inner = patient_split(rest, val_fraction, 0.0, seed)
    return {"train": _expand(inner["train"], members), "val": _expand(inner["val"], members),
            "test": _expand(test_groups, members)}


def check_disjoint(parts: dict[str, Sequence[str]]) -> None:
    """Raise ConfigError if any patient id appears in two parts."""
    seen: dict[str, str] = {}
    for name, ids in parts.items():
        for pid in ids:
            if pid in seen:
                raise ConfigError(f"patient {pid} is in both {seen[pid]!r} and {name!r}")
            seen[pid] = name


def rsna_group_split(patients: pd.DataFrame, group: str = "patient_id_dicom",
                     val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                     stratify: str | Sequence[str] | None = None) -> dict[str, list[str]]:
    """Split series into train, validation and test so that no person is in two parts.

    Groups (by default DICOM PatientID) are split with :func:`patient_split`, stratified
    on each label's OR over the group's series; then every series goes where its group
    went.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of sorted series ids.

    Raises:
        ConfigError: If ``patients`` has no ``group`` column.
    """
    table, members = _grouped(patients, group)
    parts = patient_split(table, val_fraction, test_fraction, seed, stratify)
    return {name: _expand(gids, members) for name, gids in parts.items()}


# --- internals -------------------------------------------------------------------------

def _assign(patients: pd.DataFrame, names: Sequence[str], sizes: Sequence[float], seed: int,
            stratify: str | Sequence[str] | None) -> dict[str, list[str]]:
    """Patients assigned to the named parts by :func:`iterative_stratification`."""
    columns = _label_columns(patients, stratify)
    ids = np.array(sorted(str(pid) for pid in patients.index), dtype=object)
    table = patients.set_axis(patients.index.astype(str)).loc[ids, columns]
    labels = table.to_numpy(dtype=np.float64) if len(ids) else np.zeros((0, len(columns)))
    part = iterative_stratification(labels, sizes, seed)
    return {name: sorted(ids[part == k]) for k, name in enumerate(names)}


def _label_columns(patients: pd.DataFrame, stratify: str | Sequence[str] | None) -> list[str]:
    if stratify is None:
        columns = [label for label in LABELS if label in patients.columns]
    else:
        columns = [stratify] if isinstance(stratify, str) else list(stratify)
    missing = [c for c in columns if c not in patients.columns]
    if missing or not columns:
        raise ConfigError(f"the patients table has no label column(s) to stratify on: "
                          f"{', '.join(missing) or ', '.join(LABELS)}")
    return columns


def _grouped(patients: pd.DataFrame, group: str | None) -> tuple[pd.DataFrame, dict[str, list[str]] | None]:
    """One row per group with each label's OR over its rows, and the rows of each group
    (``None`` when ``group`` is None: the rows are the patients)."""
    if group is None:
        return patients, None
    if group not in patients.columns:
        raise ConfigError(f"patients table has no {group!r} column to group by")
    columns = [label for label in LABELS if label in patients.columns]
    table = patients.groupby(group)[columns].max().astype(int)
    table.index = table.index.astype(str)
    members = {str(g): [str(s) for s in ids] for g, ids in patients.groupby(group).groups.items()}
    return table, members


def _expand(group_ids: Sequence[str], members: dict[str, list[str]] | None) -> list[str]:
    if members is None:
        return sorted(group_ids)
    return sorted(s for g in group_ids for s in members[g])


def _most_wanted(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> int:
    """The part with the largest ``first``; ties by the largest ``second``, then at random."""
    candidates = np.flatnonzero(first >= first.max() - 1e-9)
    if candidates.size > 1:
        candidates = candidates[second[candidates] >= second[candidates].max() - 1e-9]
    return int(candidates[0] if candidates.size == 1 else rng.choice(candidates))


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))
