import os
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(1)  # tiny models: one thread is fastest, and tests may share the cores
os.environ.setdefault("OMP_NUM_THREADS", "1")  # so do the lnexp processes the tests start

# Tables are compared as text: pin the width so rich does not wrap by terminal size.
os.environ.setdefault("COLUMNS", "200")

TINY = {
    "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16},
    "data": {"source": "synthetic", "task": "copy", "vocab_size": 16},
    "optim": {"lr": 3e-3},
    "train": {"steps": 12, "batch_size": 4, "seq_len": 16, "eval_every": 5, "eval_batches": 2},
    "log": {"grad_every": 5, "loss_every": 4},
}


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["LNEXP_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (TINY updated section by section) and return its path."""

    def write(name: str = "tiny", **sections: dict) -> Path:
        raw = {key: dict(value) for key, value in TINY.items()}
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        raw.setdefault("run", {}).setdefault("dir", str(tmp_path / "runs"))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write
