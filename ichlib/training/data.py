"""A run's data: read and check the folder, build the volume cache, split the patients, and
make the train / validation / test datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ichlib.errors import ConfigError, DataError, WriteError
from ichlib.io.cachedir import default_cache_dir
from ichlib.io.folder import read_dataset
from ichlib.io.tables import CtIchData
from ichlib.preprocess.augment import ScanAugment
from ichlib.preprocess.dataset import ScanDataset
from ichlib.preprocess.splits import check_disjoint, cv_split, patient_split, rsna_group_split
from ichlib.training.config import TrainConfig
from ichlib.training.log import QUIET, RunLog

_FIX_HINT = "Fix or remove them, or pass skip_bad=True (--skip-bad) to leave them out."


@dataclass
class PreparedData:
    """Validated data, split and datasets for one run (see :func:`prepare_data`).

    Attributes:
        data: The dataset folder's tables (broken patients dropped).
        split: ``{"train", "val", "test"}`` patient ids.
        train, val, test: The datasets (``train`` jitters and augments).
        skipped: ``{"patient_id", "path", "problem"}`` of each patient left out.
        cache_dir: The resized-volume cache.
    """

    data: CtIchData
    split: dict[str, list[str]]
    train: ScanDataset
    val: ScanDataset
    test: ScanDataset
    skipped: list[dict] = field(default_factory=list)
    cache_dir: Path | None = None


def prepare_data(config: TrainConfig, log: RunLog = QUIET, data: CtIchData | None = None) -> PreparedData:
    """Read the folder, build the cache, drop broken patients if allowed, split, make datasets.

    With ``config.fold`` set, the split is that fold of a cross-validation
    (:func:`~ichlib.preprocess.splits.cv_split`).

    Args:
        config: The run's settings.
        log: Where the cache's progress bar goes.
        data: The folder as :func:`read_data` read it (read here when None).

    Raises:
        DataError: On broken patients without ``skip_bad`` (all of them listed).
        ConfigError: If a split would be empty, or ``folds`` is set without ``fold``.
    """
    if config.folds is not None and config.fold is None:
        raise ConfigError(f"folds={config.folds} asks for a cross-validation: run "
                          "ichlib.training.cv.cross_validate(config) (ichlib train --folds); "
                          "fit trains one fold of it (fold=k)")
    data = read_data(config) if data is None else data
    skipped = [{"patient_id": p.patient_id, "path": p.path, "problem": p.problem}
               for p in data.problems]
    failed = _build_cache(data, config, log)
    skipped += [{"patient_id": pid, "path": exc.path, "problem": exc.problem} for pid, exc in failed.items()]
    data.drop(failed)
    if not data.patient_ids:
        raise DataError(data.root, "no usable patients")
    split = _split_patients(data, config)
    augment = ScanAugment() if config.augment else None
    preprocess, cache_dir = config.preprocess, _cache_dir(config)
    whole = config.eval_slices == "all"
    return PreparedData(
        data=data, split=split, skipped=skipped, cache_dir=cache_dir,
        train=ScanDataset(data, split["train"], preprocess, cache_dir, train=True, augment=augment,
                          seed=config.seed),
        val=ScanDataset(data, split["val"], preprocess, cache_dir, seed=config.seed, all_slices=whole),
        test=ScanDataset(data, split["test"], preprocess, cache_dir, seed=config.seed, all_slices=whole),
    )


def _split_patients(data: CtIchData, config: TrainConfig) -> dict[str, list[str]]:
    """Train / validation / test by patient (RSNA: by person, so no one is in two parts).

    Raises:
        ConfigError: If a split would be empty.
    """
    patients = data.patients
    group = "patient_id_dicom" if "patient_id_dicom" in patients.columns else None
    if config.fold is not None:  # one fold of a cross-validation
        split = cv_split(patients, config.folds, config.fold, config.val_fraction, config.seed, group)
    elif group:  # RSNA: scans are series; keep each person together
        split = rsna_group_split(patients, val_fraction=config.val_fraction,
                                 test_fraction=config.test_fraction, seed=config.seed)
    else:
        split = patient_split(patients, config.val_fraction, config.test_fraction, seed=config.seed)
    check_disjoint(split)
    empty = [name for name, ids in split.items() if not ids]
    if empty:
        raise ConfigError(f"the {' and '.join(empty)} split(s) would be empty with {len(patients)} "
                          f"patients, val_fraction={config.val_fraction} and test_fraction="
                          f"{config.test_fraction}; use more patients or larger fractions")
    return split


def read_data(config: TrainConfig) -> CtIchData:
    """The dataset folder's tables (broken patients left out with ``skip_bad``).

    Raises:
        DataError: On broken patients without ``skip_bad``, saying how to go on.
    """
    try:
        return read_dataset(config.data_dir, on_error="skip" if config.skip_bad else "raise")
    except DataError as exc:
        if config.skip_bad or "problem(s) found" not in exc.problem:
            raise
        raise DataError(exc.path, f"{exc.problem}\n{_FIX_HINT}") from exc


def volume_cache(data: CtIchData, config: TrainConfig) -> ScanDataset:
    """Every patient of ``data``, reading through ``config``'s volume cache: its
    ``resized_volume(patient_id)`` builds a missing cache entry."""
    return ScanDataset(data, data.patient_ids, config.preprocess, _cache_dir(config))


def _cache_dir(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir()


def _build_cache(data: CtIchData, config: TrainConfig, log: RunLog) -> dict[str, DataError]:
    """Resize every scan into the cache; returns the patients whose scan could not be read.

    Raises:
        DataError: Listing every unreadable scan, unless ``skip_bad``.
    """
    everyone = volume_cache(data, config)
    failed: dict[str, DataError] = {}
    for pid in log.bar(data.patient_ids, desc="cache"):
        try:
            everyone.resized_volume(pid)
        except WriteError:
            raise  # a full or read-only cache folder is not a broken scan: stop
        except DataError as exc:
            failed[pid] = exc
    if failed and not config.skip_bad:
        listing = "\n  ".join(str(e) for e in failed.values())
        raise DataError(data.root, f"{len(failed)} scan(s) could not be read:\n  {listing}\n{_FIX_HINT}")
    return failed
