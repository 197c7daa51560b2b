import numpy as np
import pytest

from ichlib.errors import DataError
from ichlib.io.ctich import LABEL_CSV, read_ct_ich, read_label_table
from ichlib.io.nifti import save_mask
from ichlib.labels import LABELS
from tests.conftest import labels_with

HEADER = "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No"


def test_labels_known_by_construction(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    assert data.patient_ids == ["049", "050", "051", "052"]
    assert list(data.patients.columns) == ["n_slices", *LABELS]
    assert data.patients["n_slices"].tolist() == [6, 8, 5, 3]
    # 050: epidural on slices 3 and 4 (1-based), i.e. rows 2 and 3
    lab = data.slice_labels("050")
    assert lab.shape == (8, 6)
    epi, anyc = LABELS.index("epidural"), LABELS.index("any")
    assert lab[:, epi].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert lab[:, anyc].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert lab[:, [i for i in range(6) if i not in (epi, anyc)]].sum() == 0
    # 051: subdural on slices 2-3, intraparenchymal on 3-5 -> patient labels OR over slices
    row = data.patients.loc["051"]
    assert (row["any"], row["subdural"], row["intraparenchymal"], row["epidural"]) == (1, 1, 1, 0)
    assert data.patients.loc["049", list(LABELS)].sum() == 0
    assert data.scans["050"].name == "050.nii" and data.masks["050"].name == "050.nii"
    assert data.problems == []


def test_columns_are_read_by_name_with_bom_and_float_values(small_ct_ich):
    csv = small_ct_ich / LABEL_CSV
    lines = csv.read_text().splitlines()
    cols = lines[0].split(",")
    order = list(reversed(range(len(cols))))
    rewritten = [",".join(cols[i] for i in order)]
    for line in lines[1:]:
        vals = line.split(",")
        rewritten.append(",".join(vals[i] if i < 2 else f"{float(vals[i]):.1f}" for i in order))
    csv.write_bytes(b"\xef\xbb\xbf" + ("\n".join(rewritten) + "\n").encode())
    data = read_ct_ich(small_ct_ich)
    assert data.slice_labels("050")[:, LABELS.index("epidural")].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]


def _rewrite_row(root, patient, slice_number, **values):
    csv = root / LABEL_CSV
    lines = csv.read_text().splitlines()
    cols = lines[0].split(",")
    for i, line in enumerate(lines[1:], start=1):
        vals = line.split(",")
        if vals[0] == str(patient) and vals[1] == str(slice_number):
            for k, v in values.items():
                vals[cols.index(k)] = v
            lines[i] = ",".join(vals)
    csv.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("values,message", [
    ({"Epidural": "2"}, "Epidural = '2'"),
    ({"Subdural": "-1"}, "Subdural = '-1'"),
    ({"Intraparenchymal": "yes"}, "Intraparenchymal = 'yes'"),
    ({"No_Hemorrhage": "1", "Epidural": "1"}, "No_Hemorrhage = 1 but a subtype is 1"),
    ({"No_Hemorrhage": "0"}, "No_Hemorrhage = 0 but no subtype is 1"),
])
def test_bad_label_values_are_reported_and_the_patient_dropped(small_ct_ich, values, message):
    _rewrite_row(small_ct_ich, 49, 2, **values)
    with pytest.raises(DataError, match="1 problem"):
        read_ct_ich(small_ct_ich)
    data = read_ct_ich(small_ct_ich, on_error="skip")
    assert "049" not in data.patient_ids and "050" in data.patient_ids
    (problem,) = data.problems
    assert message in problem.problem and problem.patient_id == "049"
    assert problem.path.endswith(LABEL_CSV) and "slice 2" in problem.problem


def test_duplicate_rows(small_ct_ich):
    csv = small_ct_ich / LABEL_CSV
    csv.write_text(csv.read_text() + "50,3,0,0,0,1,0,0,0\n")
    data = read_ct_ich(small_ct_ich, on_error="skip")
    assert [p.problem for p in data.problems] == ["duplicate rows for patient 050, slice 3"]
    assert "050" not in data.patient_ids


def test_row_count_differs_from_slice_count(small_ct_ich):
    csv = small_ct_ich / LABEL_CSV
    lines = [ln for ln in csv.read_text().splitlines() if not ln.startswith("52,3,")]
    csv.write_text("\n".join(lines) + "\n")
    data = read_ct_ich(small_ct_ich, on_error="skip")
    (problem,) = data.problems
    assert problem.path.endswith("052.nii")
    assert "3 slices but" in problem.problem and "2 rows" in problem.problem


def test_missing_scan_missing_rows_missing_mask(small_ct_ich):
    (small_ct_ich / "ct_scans" / "049.nii").unlink()
    (small_ct_ich / "masks" / "051.nii").unlink()
    csv = small_ct_ich / LABEL_CSV
    csv.write_text("\n".join(ln for ln in csv.read_text().splitlines() if not ln.startswith("52,")) + "\n")
    data = read_ct_ich(small_ct_ich, on_error="skip")
    by_patient = {p.patient_id: p for p in data.problems}
    assert "rows" in by_patient["049"].problem and "no scan" in by_patient["049"].problem
    assert by_patient["051"].problem == "mask not found"
    assert by_patient["052"].problem.startswith("scan has no rows")
    assert data.patient_ids == ["050"]
    with pytest.raises(DataError, match="3 problem"):
        read_ct_ich(small_ct_ich)


def test_mask_shape_mismatch(small_ct_ich):
    save_mask(small_ct_ich / "masks" / "050.nii", np.zeros((8, 16, 16), bool))
    data = read_ct_ich(small_ct_ich, on_error="skip")
    (problem,) = data.problems
    assert problem.path.endswith("050.nii") and "mask shape (8, 16, 16)" in problem.problem


def test_unreadable_scan(small_ct_ich):
    (small_ct_ich / "ct_scans" / "051.nii").write_bytes(b"garbage" * 100)
    data = read_ct_ich(small_ct_ich, on_error="skip")
    (problem,) = data.problems
    assert problem.patient_id == "051" and problem.path.endswith("051.nii")


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    (HEADER + "\n", "no rows"),
    (HEADER.replace(",Subdural", "") + "\n49,1,0,0,0,0,1,0\n", "missing column"),
])
def test_unusable_label_files(tmp_path, text, message):
    (tmp_path / LABEL_CSV).write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_label_table(tmp_path / LABEL_CSV)
    assert LABEL_CSV in str(info.value)


def test_a_duplicated_label_column_is_refused_naming_it(small_ct_ich):
    csv = small_ct_ich / LABEL_CSV
    lines = csv.read_text().splitlines()
    # A second Epidural column whose values disagree with the first: which one is right?
    lines = [lines[0] + ",Epidural"] + [line + ",1" for line in lines[1:]]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'Epidural' appears 2 times in the header "
                                        r"\(columns 6, 10\)") as info:
        read_ct_ich(small_ct_ich)
    assert info.value.path == str(csv)


def test_unusable_folders(tmp_path, make_ct_ich):
    with pytest.raises(DataError, match="not found"):
        read_ct_ich(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ct_scans"):
        read_ct_ich(tmp_path / "empty")
    root = make_ct_ich({49: labels_with(3)})
    (root / LABEL_CSV).unlink()
    with pytest.raises(DataError, match="label CSV not found"):
        read_ct_ich(root)
