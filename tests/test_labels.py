import pytest

from ichlib.labels import CT_ICH_COLUMNS, LABELS, SUBTYPES, label_index


def test_one_order_any_first():
    assert LABELS == ("any", "intraparenchymal", "intraventricular", "subarachnoid", "epidural", "subdural")
    assert SUBTYPES == LABELS[1:]
    assert list(CT_ICH_COLUMNS) == list(SUBTYPES)
    assert all(col.lower() == name for name, col in CT_ICH_COLUMNS.items())


def test_label_index():
    assert label_index("epidural") == 4
    with pytest.raises(KeyError, match="expected one of any"):
        label_index("Epidural ")
