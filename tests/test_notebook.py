"""Results.ipynb runs top to bottom in a fresh kernel, against tiny checkpoints made here."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from fixtures import train_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    # rand_write trains one epoch (the notebook draws its loss curve); synthesis stops after
    # one step, leaving only synthesis_last.pt and no history: the notebook must cope with both
    train_tiny(root, "rand_write", "--num_epochs", "1")
    train_tiny(root, "synthesis", "--max_steps", "1")
    return os.path.join(root, "save")


def test_results_notebook_runs(model_dir, monkeypatch):
    for name, value in {"HANDWRITING_MODEL_DIR": model_dir, "HANDWRITING_SAMPLES": "2",
                        "HANDWRITING_LENGTH": "60", "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(os.path.join(ROOT, "Results.ipynb"), as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, when a cell fails

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs)
    # unconditional samples, three biases, the attention window and one loss-curve figure
    assert len(images) == 6, text
    assert "rand_write: " in text and "synthesis: " in text and "No " not in text
    assert "synthesis: no finished epoch recorded yet" in text
    assert not any(o.output_type == "error" for o in outputs)

