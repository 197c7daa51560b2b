"""The dataset tables' summaries: label counts and co-occurrence, by hand."""

import pytest

from ichlib.errors import DataError
from ichlib.io.ctich import read_ct_ich
from ichlib.io.tables import cooccurrence, label_counts, refuse_duplicate_columns
from ichlib.labels import LABELS


def test_label_counts_and_cooccurrence_by_hand(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    counts = label_counts(data)
    # patients: 050 epidural, 051 subdural + intraparenchymal -> any = 2 of 4
    assert counts.loc["any", "patients"] == 2 and counts.loc["any", "patients_%"] == 50.0
    assert counts.loc["epidural", "slices"] == 2
    # 051: subdural on slices 2-3, IPH on 3-5 -> any on slices 2..5 = 4 slices; 050: 2 slices
    assert counts.loc["any", "slices"] == 6
    co = cooccurrence(data)
    assert co.loc["subdural", "intraparenchymal"] == 1 and co.loc["epidural", "epidural"] == 1
    assert co.loc["epidural", "subdural"] == 0
    assert cooccurrence(data, "slices").loc["subdural", "intraparenchymal"] == 1  # slice 3 only


def test_largest_lesion_slice_prefers_single_subtype_slices(small_ct_ich):
    from ichlib.io.tables import largest_lesion_slice

    data = read_ct_ich(small_ct_ich)
    # 051: subdural on slices 2-3 and IPH on 3-5, so slice 3 has both; subdural alone is slice 2
    assert largest_lesion_slice(data, "subdural") == ("051", 2)
    assert largest_lesion_slice(data, "epidural")[0] == "050"
    assert largest_lesion_slice(data, "intraventricular") is None


@pytest.mark.parametrize(("header", "column", "positions"), [
    ("PatientNumber,SliceNumber,Epidural,Subdural,Epidural", "Epidural", "3, 5"),
    ("\ufeffID, Label ,Label", "Label", "2, 3"),           # BOM and spaces around names
    ('"a,b",c,c,c', "c", "2, 3, 4"),                       # a quoted name holding a comma
])
def test_a_column_named_twice_is_refused_naming_it(tmp_path, header, column, positions):
    path = tmp_path / "labels.csv"
    path.write_text(header + "\n" + ",".join("1" * (header.count(",") + 1)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"column '{column}' appears {positions.count(',') + 1} "
                                        rf"times in the header \(columns {positions}\)") as info:
        refuse_duplicate_columns(path)
    assert info.value.path == str(path)


def test_distinct_columns_pass(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("Epidural,Epidural.1,Subdural\n1,0,1\n")  # a real '.1' name is not a duplicate
    refuse_duplicate_columns(path)


def test_slice_labels_follow_the_table_after_drop_and_come_as_copies(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    by_hand = data.slices[data.slices["patient_id"] == "050"]
    first = data.slice_labels("050")
    assert first.shape == (8, 6) and (first == by_hand[list(LABELS)].to_numpy()).all()
    assert first[2:4, 4].tolist() == [1.0, 1.0]  # epidural on slices 3-4
    first[:] = 7.0  # a caller's change does not reach the next call
    assert data.slice_labels("050")[2:4, 4].tolist() == [1.0, 1.0]
    data.drop(["050"])
    assert data.slice_labels("050").shape == (0, 6)
    assert data.slice_labels("051").shape == (5, 6)
