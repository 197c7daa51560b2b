"""The label names, in the one order used everywhere in ichlib.

The published code for this method logged its metrics under the wrong class names because
the order was written out in more than one place. Here it is written once.
"""

from __future__ import annotations

#: Patient- and slice-level targets: ``any`` first, then the five subtypes.
LABELS: tuple[str, ...] = (
    "any",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "epidural",
    "subdural",
)

SUBTYPES: tuple[str, ...] = LABELS[1:]

#: Column of ``hemorrhage_diagnosis_raw_ct.csv`` for each subtype label.
CT_ICH_COLUMNS: dict[str, str] = {
    "intraparenchymal": "Intraparenchymal",
    "intraventricular": "Intraventricular",
    "subarachnoid": "Subarachnoid",
    "epidural": "Epidural",
    "subdural": "Subdural",
}

#: The exact header of the CT-ICH slice table (columns are read by name, not position).
CT_ICH_CSV_COLUMNS: tuple[str, ...] = (
    "PatientNumber",
    "SliceNumber",
    "Intraventricular",
    "Intraparenchymal",
    "Subarachnoid",
    "Epidural",
    "Subdural",
    "No_Hemorrhage",
    "Fracture_Yes_No",
)


def label_index(name: str) -> int:
    """Return the position of a label name in :data:`LABELS`.

    Raises:
        KeyError: If ``name`` is not one of the six labels; the message lists them.
    """
    try:
        return LABELS.index(name)
    except ValueError:
        raise KeyError(f"unknown label {name!r}; expected one of {', '.join(LABELS)}") from None
