import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import DataConfig, ModelConfig, load_config
from lnexp.core.model import TransformerLM
from lnexp.data.sources import load_data
from lnexp.run.probes import radam_rho
from lnexp.run.reader import load_run
from lnexp.run.train import Trainer, collapse_report

runner = CliRunner()


def train(path: Path, *extra: str):
    return runner.invoke(app, ["train", str(path), "--quiet", *extra])


def test_smoke_train_writes_a_complete_run_folder(tmp_path, write_config):
    path = write_config(run={"name": "r"})
    result = train(path, "--set", "model.norm=pre")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "r"
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "meta.json", "metrics.jsonl",
                                                   "probes.jsonl", "summary.json", "model.pt", ".lock"}
    run = load_run(run_dir)
    assert run.notes == []
    assert run.config["model"]["norm"] == "pre" and run.config["run"]["name"] == "r"
    assert run.meta["status"] == "completed" and run.meta["seed"] == 0
    assert run.meta["command"] == ["lnexp", "train", str(path), "--set", "model.norm=pre", "--quiet"]
    assert {"lnexp", "torch", "python"} <= run.meta["versions"].keys() and run.meta["wall_time_s"] > 0
    # one line per step, then the final model's validation line at step = train.steps
    assert [m["step"] for m in run.metrics] == list(range(13))
    assert [m["step"] for m in run.metrics if m["val_loss"] is not None] == [0, 5, 10, 12]
    assert all(math.isfinite(m["loss"]) and m["lr"] == 3e-3 for m in run.metrics[:12])
    grad_steps = sorted({p["step"] for p in run.probes if p["probe"] == "grad"})
    assert grad_steps == [0, 5, 10]
    assert [m["step"] for m in run.metrics if m["grad_norm_total"] is not None] == [0, 5, 10]
    acts = [p for p in run.probes if p["probe"] == "act" and p["step"] == 0]
    assert [a["layer"] for a in acts] == [0, 1, 2]  # entering each of 2 layers, leaving the last
    assert run.summary["status"] == "completed" and run.summary["steps_done"] == 12
    assert run.summary["final_val_loss"] == run.metrics[-1]["val_loss"]
    assert run.summary["best_val_loss"] == min(m["val_loss"] for m in run.metrics if m["val_loss"])
    state = torch.load(run_dir / "model.pt", weights_only=True)
    model = TransformerLM(ModelConfig(**run.config["model"]), vocab_size=16)
    model.load_state_dict(state)
    assert "steps_done" in result.stdout and "last/first" in result.stdout  # summary and profile tables


def test_grad_total_in_metrics_matches_the_probe_rows(tmp_path, write_config):
    assert train(write_config(run={"name": "r"})).exit_code == 0
    run = load_run(tmp_path / "runs" / "r")
    rows = {p["param"] if p["layer"] is None else (p["layer"], p["param"]): p["value"]
            for p in run.probes if p["probe"] == "grad" and p["step"] == 5}
    recorded = rows.pop("total")
    total = math.sqrt(sum(v * v for v in rows.values()))
    assert abs(run.metrics[5]["grad_norm_total"] - total) < 1e-5 * total
    assert recorded == run.metrics[5]["grad_norm_total"]


def test_loss_falls_well_below_a_uniform_guess(tmp_path, write_config):
    # Bytes of real text: learning even the unigram frequencies takes the loss far below ln 256 = 5.55
    # (the tiny copy task is not learnt in 60 steps at all: its loss stays at ln 16).
    path = write_config(data={"source": "stdlib", "max_bytes": 200_000}, optim={"lr": 1e-2},
                        train={"steps": 60, "eval_every": 30}, run={"name": "r"})
    assert train(path).exit_code == 0
    metrics = load_run(tmp_path / "runs" / "r").metrics
    val = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
    assert val[-1] < math.log(256) - 2 and val[-1] < val[0] - 2


def test_same_seed_same_numbers(tmp_path, write_config):
    for name in ("a", "b"):
        assert train(write_config(run={"name": name})).exit_code == 0
    a, b = (load_run(tmp_path / "runs" / n) for n in "ab")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics) and a.probes == b.probes


def test_compiled_model_probes_like_the_eager_one_without_graph_breaks(tmp_path, write_config):
    """The act hooks are traced into the compiled graph (armed is a guard): logging steps run
    compiled too, and read what the eager model reads."""
    torch._dynamo.reset()
    for name, compiled in (("eager", False), ("compiled", True)):
        path = write_config(name, train={"steps": 6, "compile": compiled}, log={"grad_every": 2},
                            run={"name": name})
        assert train(path).exit_code == 0
    eager, compiled = (load_run(tmp_path / "runs" / n) for n in ("eager", "compiled"))
    assert [(r["step"], r["probe"], r["layer"]) for r in compiled.probes] == \
        [(r["step"], r["probe"], r["layer"]) for r in eager.probes]
    for a, b in zip(eager.probes, compiled.probes):
        assert b["value"] == pytest.approx(a["value"], rel=1e-3, abs=1e-6), (a, b)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # armed, not armed


def test_existing_run_is_never_overwritten_without_force(tmp_path, write_config):
    path = write_config(run={"name": "r"})
    assert train(path).exit_code == 0
    before = (tmp_path / "runs" / "r" / "metrics.jsonl").read_text()
    again = train(path, "--set", "optim.lr=0.1")
    assert again.exit_code == 2 and "run folder exists" in again.stderr
    assert (tmp_path / "runs" / "r" / "metrics.jsonl").read_text() == before
    assert train(path, "--set", "optim.lr=0.1", "--force").exit_code == 0
    assert yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())["optim"]["lr"] == 0.1


def test_default_name_is_config_stem_and_timestamp(tmp_path, write_config):
    assert train(write_config("mycfg")).exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("mycfg-")


def test_divergence_is_a_recorded_result_not_a_crash(tmp_path, write_config):
    # A loss threshold below the initial loss: the run must stop at step 0 as diverged.
    path = write_config(train={"diverge_loss": 0.5}, run={"name": "d"})
    result = train(path)
    assert result.exit_code == 0 and "diverged at step 0" in result.stdout
    run_dir = tmp_path / "runs" / "d"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 0
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "diverged"


def test_nan_loss_is_recorded_as_divergence(tmp_path, write_config):
    path = write_config(optim={"name": "sgd", "lr": 100.0, "momentum": 0.0}, run={"name": "n"},
                        train={"steps": 40, "diverge_loss": 1e30})
    assert train(path).exit_code == 0
    summary = load_run(tmp_path / "runs" / "n").summary
    assert summary["status"] == "diverged" and summary["diverged_step"] < 40


def test_clipping_logs_pre_clip_norm_and_whether_it_clipped(tmp_path, write_config):
    path = write_config(optim={"clip_grad_norm": 1e-3}, run={"name": "c"})
    assert train(path).exit_code == 0
    metrics = load_run(tmp_path / "runs" / "c").metrics[:12]
    assert all(m["clipped"] and m["grad_norm_total"] > 1e-3 for m in metrics)


def test_collapse_report_flips_with_the_data():
    def grads(step, values):
        return [{"step": step, "probe": "grad", "layer": i, "param": "ffn.fc2.weight", "value": v}
                for i, v in enumerate(values)]

    probes = grads(0, [1.0, 1.0, 1.0]) + grads(10, [1.0, 1e-4, 0.5])
    plateau = [{"step": s, "loss": 2.0} for s in range(20)]
    assert collapse_report(probes, 2.0, 1.97, plateau) == {"unigram_entropy": 2.0, "collapsed": True,
                                                           "dead_layers": 1}
    assert collapse_report(probes, 2.0, 1.5, plateau)["collapsed"] is False
    assert collapse_report(grads(0, [1.0]) + grads(10, [0.5]), 2.0, 1.5, plateau)["dead_layers"] == 0


def test_unigram_entropy_is_computed_from_the_corpus(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"aab" * 100)
    data = load_data(DataConfig(source="text", path=str(tmp_path / "t.txt"), val_fraction=0.1), "decoder")
    p = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    assert data.unigram_entropy() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-3)


def test_summary_carries_the_collapse_detector(tmp_path, write_config):
    assert train(write_config(run={"name": "c"})).exit_code == 0
    summary = load_run(tmp_path / "runs" / "c").summary
    assert summary["unigram_entropy"] == pytest.approx(math.log(16))
    assert summary["collapsed"] == (abs(summary["final_val_loss"] - math.log(16)) <= 0.05)
    assert summary["dead_layers"] == 0


def test_admin_profile_init_runs_on_the_first_batch_and_skips_weight_decay(tmp_path, write_config):
    path = write_config(model={"norm": "admin", "admin_init": "profile"}, optim={"name": "adamw",
                        "weight_decay": 0.1}, run={"name": "a"})
    cfg = load_config(path)
    trainer = Trainer(cfg, load_data(cfg.data, cfg.model.arch), torch.device("cpu"))
    omegas = [b.attn_skip.item() for b in trainer.model.blocks]
    assert omegas[0] == pytest.approx(1.0) and all(w > 1.0 for w in omegas[1:])
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert decay[id(trainer.model.blocks[0].ffn_skip)] == 0.0
    assert decay[id(trainer.model.blocks[0].ffn.fc1.weight)] == 0.1


def test_diagnostic_probes_are_logged_and_compared(tmp_path, write_config):
    path = write_config(log={"probes": ["grad", "act", "update", "adam", "output_change"],
                             "output_change_steps": [0, 10], "grad_every": 5}, optim={"name": "radam"},
                        run={"name": "p"})
    assert train(path).exit_code == 0
    run = load_run(tmp_path / "runs" / "p")
    kinds = {(p["probe"], p["step"]) for p in run.probes}
    assert {("update", 0), ("adam_v_q50", 5), ("output_change", 0), ("output_change", 10)} <= kinds
    assert all(m["radam_rho"] == pytest.approx(radam_rho(m["step"], 0.98)) for m in run.metrics[:12])
    result = runner.invoke(app, ["compare", str(run.path), str(run.path), "--probe", "output_change",
                                 "--at", "10", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["runs"][0]["profile"]
    expected = [p["value"] for p in run.probes if p["probe"] == "output_change" and p["step"] == 10]
    assert shown["step"] == 10 and shown["values"] == expected and len(expected) == 2


def test_compiled_model_measures_sensitivity_like_the_eager_one(tmp_path, write_config):
    """The zeros the tap adds to the stream work under torch.compile: same values, no graph breaks, and
    the whole forward compiled in two graphs (tapped, not), nothing hooked inside it."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() leaves them
    for name, compiled in (("eager", False), ("compiled", True)):
        path = write_config(name, train={"steps": 6, "compile": compiled}, run={"name": name},
                            log={"grad_every": 2, "probes": ["sensitivity"], "ablation_steps": [2]})
        assert train(path).exit_code == 0
    eager, compiled = (load_run(tmp_path / "runs" / n) for n in ("eager", "compiled"))
    # dloss_dx and scale_free at 0, 2, 4; ablation
    assert len(compiled.probes) == len(eager.probes) == 3 * 2 * (2 + 1) + 2
    for a, b in zip(eager.probes, compiled.probes):
        assert (b["step"], b["param"], b["layer"]) == (a["step"], a["param"], a["layer"])
        assert b["value"] == pytest.approx(a["value"], rel=1e-3, abs=1e-9), (a, b)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_a_run_ends_failed_on_any_exception_and_its_clock_starts_with_the_loop(tmp_path, monkeypatch):
    """SystemExit from a progress callback (or a plugin) still closes the run; and opening the sinks
    (W&B's init can take seconds) is not counted in the run's wall time or tokens/s."""
    import time

    from lnexp.core.config import validate
    from lnexp.run import sinks
    from lnexp.run.reader import load_run
    from lnexp.run.train import train

    def cfg(name: str):
        return validate({"model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 8},
                         "data": {"source": "synthetic", "task": "copy", "vocab_size": 16},
                         "train": {"steps": 4, "batch_size": 2, "seq_len": 8, "eval_every": 2},
                         "log": {"loss_every": 2}, "run": {"name": name, "dir": str(tmp_path)}})

    def exits(done, total, row):
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        train(cfg("exits"), "test", ["test"], progress=exits)
    assert load_run(tmp_path / "exits").status == "failed"

    open_sinks = sinks.Sinks.open
    monkeypatch.setattr(sinks.Sinks, "open", lambda *a: (time.sleep(2), open_sinks(*a))[1])
    assert train(cfg("slow-sinks"), "test", ["test"]).status == "completed"
    assert load_run(tmp_path / "slow-sinks").summary["wall_time_s"] < 2
