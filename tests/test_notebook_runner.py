"""make run's papermill engine: a line per code cell on the terminal, nothing in the notebook."""

from __future__ import annotations

import io
import json

import pytest

papermill = pytest.importorskip("papermill", reason="papermill is part of the dev extra")

from ichlib.notebook_runner import EXPECTED_MINUTES, ProgressEngine, expected_line, main  # noqa: E402


def small_notebook(path):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# title"},
             {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": "\n# a comment after a blank line\nx = 21"},
             {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": "print(x * 2)"}]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_each_code_cell_is_announced_on_the_terminal_and_not_saved(tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(ProgressEngine, "stream", stream)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(small_notebook(tmp_path / "in.ipynb")), str(out),
                               engine_name="ichlib", kernel_name="python3", progress_bar=False)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("cell 1/2: # a comment after a blank line") and lines[0].startswith("   [00:")
    assert lines[1].endswith("cell 2/2: print(x * 2)")
    saved = out.read_text()
    assert "cell 1/2" not in saved and '"42\\n"' in saved   # the notebook has its own output only


def test_the_expected_time_is_printed_for_course_notebooks(capsys):
    assert set(EXPECTED_MINUTES) == {"01", "02", "03", "04", "05", "06"}
    assert expected_line("notebooks/04_training_cnn_bilstm.ipynb").startswith(
        f"expected: about {EXPECTED_MINUTES['04']:g} min")
    assert "under a minute" in expected_line("03_sequence_sampling.ipynb")
    assert expected_line("99_other.ipynb") == ""
    assert main(["expected", "05_gradcam_analysis.ipynb"]) == 0
    assert capsys.readouterr().out.strip() == expected_line("05_gradcam_analysis.ipynb")
    assert main([]) == 2
