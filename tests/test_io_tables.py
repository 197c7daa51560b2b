"""The dataset tables' summaries: label counts and co-occurrence, by hand."""

from ichlib.io.ctich import read_ct_ich
from ichlib.io.tables import cooccurrence, label_counts


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
