import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lnexp.core.config import validate
from lnexp.run.pack import packs, resume_pack, structure_key, train_pack, unpackable
from lnexp.run.reader import load_run
from lnexp.run.train import Stop, resume, train

ALL_PROBES = ["grad", "act", "update", "adam", "output_change", "rank", "sensitivity"]
BASE = {
    "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16},
    "data": {"source": "synthetic", "task": "copy", "vocab_size": 16},
    "train": {"steps": 20, "batch_size": 4, "seq_len": 16, "eval_every": 10, "eval_batches": 2},
    "log": {"grad_every": 5, "loss_every": 4, "probes": ALL_PROBES, "output_change_steps": [0, 10],
            "ablation_steps": [0, 10]},
}
ENCDEC = {"model": {"arch": "encoder_decoder"}, "data": {"source": "seq2seq", "task": "reverse"},
          "train": {"eval_bleu_every": 10}}


def config(tmp: Path, name: str, **sections: dict):
    raw = {key: dict(value) for key, value in BASE.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    raw["run"] = {"name": name, "dir": str(tmp)}
    return validate(raw)


def cells(tmp: Path, variants: list[dict], **sections: dict):
    out = []
    for i, variant in enumerate(variants):
        merged = {k: dict(v) for k, v in sections.items()}
        for section, values in variant.items():
            merged[section] = {**merged.get(section, {}), **values}
        out.append(config(tmp, f"c{i}", **merged))
    return out


# Adam and RAdam, other seeds, learning rates, warm-up, clipping, weight decay: one pack.
VARIANTS = [
    {"train": {"seed": 0}},
    {"train": {"seed": 1}, "optim": {"name": "radam", "lr": 3e-3}},
    {"train": {"seed": 2}, "optim": {"lr": 2e-3, "clip_grad_norm": 0.5, "weight_decay": 0.01},
     "schedule": {"warmup_steps": 5, "decay": "cosine"}},
]


def values(path: Path) -> tuple[list[dict], dict]:
    run = load_run(path)
    probes = {(p["step"], p["probe"], p["layer"], p["param"]): p["value"] for p in run.probes}
    return run.metrics, probes


def close(a: float | None, b: float | None, rel: float = 1e-4) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


@pytest.mark.parametrize("layout", [{"model": {"norm": "post"}}, {"model": {"norm": "pre"}}, ENCDEC],
                         ids=["post", "pre", "encdec"])
def test_packed_cells_match_the_same_cells_alone(tmp_path, layout):
    configs = cells(tmp_path / "packed", VARIANTS, **layout)
    alone = cells(tmp_path / "alone", VARIANTS, **layout)
    assert len({structure_key(c) for c in configs}) == 1
    outcomes = train_pack(configs, ["test"] * 3, [["test"]] * 3)
    assert [o.status for o in outcomes] == ["completed"] * 3
    for c in alone:
        assert train(c, "test", ["test"]).status == "completed"
    for c, a in zip(configs, alone):
        packed_metrics, packed_probes = values(Path(c.run.dir) / c.run.name)
        alone_metrics, alone_probes = values(Path(a.run.dir) / a.run.name)
        assert [m["step"] for m in packed_metrics] == [m["step"] for m in alone_metrics]
        for p, q in zip(packed_metrics, alone_metrics):
            assert p.keys() == q.keys()
            for key in ("loss", "val_loss", "lr", "grad_norm_total", "bleu", "chrf"):
                assert close(p.get(key), q.get(key)), (c.run.name, p["step"], key, p.get(key), q.get(key))
        assert packed_probes.keys() == alone_probes.keys()
        assert {k[1] for k in packed_probes} >= {"grad", "act", "update", "adam_v_q50", "output_change",
                                                 "rank", "sensitivity"}
        for key, value in alone_probes.items():
            if key[3].endswith("k.bias"):  # softmax ignores the key bias: its gradient is rounding noise
                continue
            assert math.isclose(packed_probes[key], value, rel_tol=1e-4, abs_tol=1e-9), \
                (c.run.name, key, packed_probes[key], value)


def test_a_diverged_cell_leaves_the_pack_and_the_others_are_unchanged(tmp_path):
    spike = {"train": {"seed": 5}, "optim": {"name": "sgd", "lr": 5.0},  # loss 2.7 at step 4, 9 at 5
             "schedule": {"warmup_steps": 10}}
    log = {"loss_every": 1}
    with_it = cells(tmp_path / "with", [*VARIANTS[:2], spike], log=log)
    without = cells(tmp_path / "without", VARIANTS[:2], log=log)
    outcomes = train_pack(with_it, ["test"] * 3, [["test"]] * 3)
    assert [o.status for o in outcomes] == ["completed", "completed", "diverged"]
    diverged = load_run(outcomes[2].path)
    assert diverged.status == "diverged" and diverged.summary["diverged_step"] == 5
    assert diverged.metrics[-1]["step"] == 5
    train_pack(without, ["test"] * 2, [["test"]] * 2)
    for a, b in zip(with_it[:2], without):
        metrics_a, probes_a = values(Path(a.run.dir) / a.run.name)
        metrics_b, probes_b = values(Path(b.run.dir) / b.run.name)
        strip = [{k: v for k, v in m.items() if k not in ("tokens_per_s",)} for m in metrics_a]
        assert strip == [{k: v for k, v in m.items() if k not in ("tokens_per_s",)} for m in metrics_b]
        assert probes_a == probes_b


def test_packed_resume_is_bit_exact_and_a_cell_resumes_alone(tmp_path):
    checkpointed = {"checkpoint_every": 8}
    whole = cells(tmp_path / "whole", VARIANTS, train=checkpointed)
    parts = cells(tmp_path / "parts", VARIANTS, train=checkpointed)
    train_pack(whole, ["test"] * 3, [["test"]] * 3)

    class StopAt12(Stop):
        """Requested from step 12's flush on: the pack stops at the step-12 flush (loss_every 4)."""

        @property
        def requested(self) -> bool:
            return any(len(load_run(Path(c.run.dir) / c.run.name).metrics) >= 12 for c in parts)

        @requested.setter
        def requested(self, value: bool) -> None:
            pass

    outcomes = train_pack(parts, ["test"] * 3, [["test"]] * 3, stop=StopAt12())
    assert [o.status for o in outcomes] == ["interrupted"] * 3
    paths = [Path(c.run.dir) / c.run.name for c in parts]
    assert torch.load(paths[0] / "checkpoint.pt", weights_only=True)["step"] == 14
    alone = tmp_path / "alone" / "c2"
    shutil.copytree(paths[2], alone)
    assert [o.status for o in resume_pack(paths, ["test"])] == ["completed"] * 3
    assert resume(alone, ["test"]).status == "completed"  # alone: within float tolerance
    for a, b in zip(whole, parts):
        metrics_a, probes_a = values(Path(a.run.dir) / a.run.name)
        metrics_b, probes_b = values(Path(b.run.dir) / b.run.name)
        strip = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in metrics_a]
        assert strip == [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in metrics_b]
        assert probes_a == probes_b
    metrics_a, _ = values(Path(whole[2].run.dir) / whole[2].run.name)
    metrics_b, _ = values(alone)
    assert all(close(p["loss"], q["loss"]) for p, q in zip(metrics_a, metrics_b))
    # each run's meta.json says in which packs it trained, from which step
    names = ["c0", "c1", "c2"]
    assert load_run(paths[0]).meta["packs"] == [{"from_step": 0, "cells": names},
                                                {"from_step": 14, "cells": names}]
    assert load_run(alone).meta["packs"] == [{"from_step": 0, "cells": names}]  # then resumed alone


def test_structure_key_and_packs(tmp_path):
    a, b = config(tmp_path, "a"), config(tmp_path, "b", train={"seed": 3}, optim={"name": "radam"},
                                         model={"residual_scaling": "gpt2"})
    deeper = config(tmp_path, "c", model={"n_layers": 3})
    other_init = config(tmp_path, "d", model={"init": "gpt2"})
    assert structure_key(a) == structure_key(b)
    assert structure_key(a) != structure_key(deeper)
    assert structure_key(a) != structure_key(other_init)  # the recipe's embedding scale is in the forward
    dropout = config(tmp_path, "e", model={"dropout": 0.1})
    assert unpackable(dropout) and unpackable(a) is None
    assert packs([a, deeper, b, a, b, dropout, dropout], 2) == [[0, 2], [3, 4], [1], [5], [6]]


def test_sweep_pack_writes_the_same_folders_and_a_rerun_skips_them(tmp_path, write_config):
    from typer.testing import CliRunner

    from lnexp.cli import app

    path = write_config(train={"steps": 6, "eval_every": 3, "eval_batches": 1},
                        log={"grad_every": 3, "loss_every": 3})
    args = ["sweep", str(path), "--grid", "optim.name=adam,radam", "--grid", "model.norm=post,pre",
            "--seeds", "2", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--pack", "3", "--name", "packed"])
    assert result.exit_code == 0, result.output
    CliRunner().invoke(app, [*args, "--name", "alone"])
    packed, alone = tmp_path / "runs" / "packed", tmp_path / "runs" / "alone"
    names = sorted(p.name for p in alone.iterdir() if (p / "meta.json").exists())  # not plots/
    assert len(names) == 8 and names == sorted(p.name for p in packed.iterdir() if (p / "meta.json").exists())
    for name in names:
        a, b = load_run(packed / name), load_run(alone / name)
        assert a.status == b.status == "completed"
        files = [sorted(f.name for f in (root / name).iterdir()) for root in (packed, alone)]
        assert files[0] == files[1]
        assert all(close(p["loss"], q["loss"]) for p, q in zip(a.metrics, b.metrics) if p["loss"] is not None)
    rerun = CliRunner().invoke(app, [*args, "--pack", "3", "--name", "packed"])
    assert rerun.exit_code == 0 and "4 cells" not in rerun.output
    assert json.loads((packed / "sweep.json").read_text())["cells"][0]["status"] == "completed"


def test_reproduce_packs_only_where_measured_faster(tmp_path, monkeypatch):
    import lnexp.run.pack as pack

    timings = []

    def timed(configs, packed, steps=3):
        timings.append((configs[0].model.n_layers, len(configs), packed))
        if packed:
            return 1.0
        return 2.0 if configs[0].model.n_layers == 2 else 1.4  # depth 3: faster, within PACK_MARGIN

    monkeypatch.setattr(pack, "timed_steps", timed)
    two = [config(tmp_path, f"a{i}", train={"seed": i, "steps": 40}) for i in range(3)]
    three = [config(tmp_path, f"b{i}", train={"seed": i, "steps": 40}, model={"n_layers": 3})
             for i in range(2)]
    short = [config(tmp_path, f"c{i}", train={"seed": i, "steps": 39}) for i in range(2)]
    units = pack.packs_that_pay([*two, *three, *short], 2)
    assert units == [[0, 1], [2], [3], [4], [5], [6]]
    assert timings == [(2, 2, True), (2, 2, False), (3, 2, True), (3, 2, False)]  # one per shape and size


def test_a_pack_that_cannot_open_a_run_leaves_no_folder_running(tmp_path):
    from lnexp.run.reader import RunError

    first, second = cells(tmp_path, VARIANTS[:2])
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "meta.json").write_text('{"status": "completed"}')  # not to be replaced
    with pytest.raises(RunError):
        train_pack([first, second], ["test"] * 2, [["test"]] * 2)
    assert load_run(tmp_path / "c0").status == "failed"


def test_ctrl_c_while_a_pack_opens_and_a_run_that_cannot_reopen_leave_the_others_resumable(tmp_path,
                                                                                          monkeypatch):
    import lnexp.run.pack as pack
    from lnexp.run.reader import RunError

    opened = []

    def interrupted_second(*args, **kwargs):
        if opened:
            raise KeyboardInterrupt
        opened.append(args[0])
        return new_run(*args, **kwargs)

    new_run = pack.new_run
    monkeypatch.setattr(pack, "new_run", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        train_pack(cells(tmp_path / "a", VARIANTS[:2]), ["test"] * 2, [["test"]] * 2)
    assert load_run(tmp_path / "a" / "c0").status == "interrupted"
    monkeypatch.undo()

    # resuming a pack where one run is finished: the others stay interrupted, not failed by its error
    stopped = cells(tmp_path / "b", VARIANTS[:2], train={"checkpoint_every": 8})
    for c in stopped:
        stop = Stop()
        stop.requested = True
        assert train(c, "test", ["test"], stop=stop).status == "interrupted"
    done = config(tmp_path / "b", "done")
    assert train(done, "test", ["test"]).status == "completed"
    with pytest.raises(RunError):
        resume_pack([tmp_path / "b" / "c0", tmp_path / "b" / "done"], ["test"])
    assert load_run(tmp_path / "b" / "c0").status == "interrupted"
    assert load_run(tmp_path / "b" / "c0").summary.get("error") is None
