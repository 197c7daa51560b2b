"""Patient-level splits: no patient is ever in two parts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from ichlib.errors import ConfigError


def patient_split(patients: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0, stratify: str = "any") -> dict[str, list[str]]:
    """Split patients into train, validation and test, stratified by one label.

    Within each class of ``stratify``, patients are shuffled with ``seed`` and the first
    ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to
    validation, the rest to train, so every part gets positives when a class has enough.

    Args:
        patients: Table indexed by patient id with a 0/1 column ``stratify``.
        val_fraction: Share of patients for validation (model selection, thresholds).
        test_fraction: Share held out for the final test, never used for any choice.
        seed: Seed of the shuffle; the same seed gives the same split.
        stratify: Column to stratify on.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of sorted patient ids.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for _, group in patients.groupby(patients[stratify].astype(int), sort=True):
        ids = np.array(sorted(group.index), dtype=object)
        rng.shuffle(ids)
        n_test = int(round(len(ids) * test_fraction))
        n_val = int(round(len(ids) * val_fraction))
        parts["test"] += list(ids[:n_test])
        parts["val"] += list(ids[n_test:n_test + n_val])
        parts["train"] += list(ids[n_test + n_val:])
    return {name: sorted(ids) for name, ids in parts.items()}


def kfold_split(patients: pd.DataFrame, n_folds: int = 5, seed: int = 0,
                stratify: str = "any") -> list[dict[str, list[str]]]:
    """Stratified k-fold over patients.

    Returns:
        One ``{"train": [...], "val": [...]}`` per fold; every patient is in exactly one
        ``val`` list.
    """
    ids = np.array(sorted(patients.index), dtype=object)
    y = patients.loc[ids, stratify].astype(int).to_numpy()
    if n_folds < 2 or np.bincount(y).min(initial=len(y)) < n_folds and len(np.unique(y)) > 1:
        raise ConfigError(f"cannot make {n_folds} stratified folds from class counts "
                          f"{np.bincount(y).tolist()}")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [{"train": sorted(ids[tr]), "val": sorted(ids[va])} for tr, va in folds.split(ids, y)]


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
                     stratify: str = "any") -> dict[str, list[str]]:
    """Split series into train, validation and test so that no person is in two parts.

    Groups (by default DICOM PatientID) are split with :func:`ichlib.preprocess.splits.patient_split`,
    stratified by the OR of ``stratify`` over each group's series; then every series goes
    where its group went.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of sorted series ids.

    Raises:
        ConfigError: If ``patients`` has no ``group`` column.
    """
    if group not in patients.columns:
        raise ConfigError(f"patients table has no {group!r} column to group by")
    groups = patients.groupby(group)[stratify].max().astype(int).to_frame()
    groups.index = groups.index.astype(str)
    parts = patient_split(groups, val_fraction, test_fraction, seed, stratify)
    members = {str(g): list(ids) for g, ids in patients.groupby(group).groups.items()}
    return {name: sorted(str(s) for g in gids for s in members[g]) for name, gids in parts.items()}
