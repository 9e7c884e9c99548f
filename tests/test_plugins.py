"""A researcher's own layout, norm and probe, from a plugin file in a temporary folder: they train,
compare, sweep and run the layouts suite like the built-ins, with nothing under lnexp/ changed."""

import dataclasses
import json

import pytest
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core import plugins
from lnexp.core.layouts import LAYOUTS, NORMS
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.experiments.reproduce import SCALES, reproduce
from lnexp.experiments.reproduce.suites import SUITES
from lnexp.experiments.reproduce.suites import layouts as layouts_suite

PLUGIN = '''
import torch
from torch import nn

from lnexp.core.layouts import Layout, Where, register_layout, register_norm
from lnexp.core.probe_kinds import ProbeKind, register_probe

register_layout(Layout("peri", "Peri-LN", "x = x + LN_out(F(LN(x)))", "a test plugin",
                       norm_at=Where.INPUT, out_norm=True))


class ScaleNorm(nn.Module):
    """Nguyen & Salazar 2019: g · x / ||x||, one learnable scalar g."""

    def __init__(self, d, eps):
        super().__init__()
        self.d, self.eps = d, eps
        self.g = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        self.g.fill_(self.d ** 0.5)

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


@register_norm("scalenorm")
def scalenorm(cfg):
    return ScaleNorm(cfg.d_model, cfg.norm_eps)


def stream_mean(probe):
    """The mean of the residual stream entering each block."""
    means = []
    hooks = [b.register_forward_pre_hook(lambda m, a: means.append(a[0].float().mean()))
             for b in probe.blocks]
    try:
        probe.model(*probe.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {"mean": torch.stack(means)}


register_probe(ProbeKind("stream_mean", "mean of the residual stream", "measures",
                         {"mean": "residual-stream mean"}, evaluate=stream_mean))
'''
# A researcher's own claim: a suite whose grid and analysis come from a plugin file too.
SUITE_PLUGIN = '''
from dataclasses import dataclass

from lnexp.experiments.reproduce.engine import per_seed
from lnexp.experiments.reproduce.measure import difference, final_loss
from lnexp.experiments.reproduce.report import Analysis
from lnexp.experiments.reproduce.suites import Suite, register
from lnexp.experiments.reproduce.suites.common import model_norm, optim_lr
from lnexp.experiments.reproduce.verdicts import GREATER, Claim


@dataclass(frozen=True)
class Params:
    lr: float


def grid(scale, p):
    return {norm: per_seed("train", scale.seeds, model_norm(norm), optim_lr(p.lr))
            for norm in ("post", "peri")}


NO_WORSE = Claim("Peri-LN ends no worse than Post-LN", "final val loss: Post-LN - Peri-LN (nats)", GREATER,
                 -10.0, "a test's choice")


def analyse(runs):
    post, peri = ([final_loss(r) for r in runs[norm]] for norm in ("post", "peri"))
    return Analysis([NO_WORSE.test([difference(a, b) for a, b in zip(post, peri)], runs.seeds())],
                    ["a test plugin's claim"])


register(Suite("peri-claim", "Peri-LN trains as well as Post-LN", "a test plugin", {"test": Params(1e-3)},
               grid, analyse))
'''
CONFIG = {"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16,
                    "norm": "peri", "norm_type": "scalenorm"},
          "data": {"source": "synthetic", "task": "copy", "vocab_size": 16},
          "train": {"steps": 6, "batch_size": 4, "seq_len": 16, "eval_every": 3, "eval_batches": 1},
          "log": {"grad_every": 3, "probes": ["grad", "act", "stream_mean"]}, "plugins": ["my_norms.py"]}


@pytest.fixture(autouse=True)
def forget_plugins():
    """Registries are per process: what a test's plugin registered leaves with the test."""
    saved = [(registry, dict(registry)) for registry in (LAYOUTS, NORMS, PROBE_KINDS, SUITES)]
    loaded = dict(plugins._LOADED)
    yield
    for registry, items in saved:
        registry.clear()
        registry.update(items)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_norms.py").write_text(PLUGIN)
    (tmp_path / "peri.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_a_plugin_layout_norm_and_probe_train_compare_and_sweep(folder):
    result = invoke("train", "peri.yaml", "--set", "run.name=peri", "--quiet")
    assert result.exit_code == 0, result.output
    run = folder / "runs" / "peri"
    meta = json.loads((run / "meta.json").read_text())
    import hashlib

    assert meta["plugins"] == [{"path": str(folder / "my_norms.py"),
                                "sha256": hashlib.sha256(PLUGIN.encode()).hexdigest()}]
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == [str(folder / "my_norms.py")]
    rows = [json.loads(line) for line in (run / "probes.jsonl").read_text().splitlines()]
    means = {(r["layer"], r["param"]) for r in rows if r["probe"] == "stream_mean"}
    assert means == {(0, "mean"), (1, "mean")}
    assert any(r["param"] == "attn_out_norm.g" for r in rows if r["probe"] == "grad")  # the norm's own g
    compared = invoke("compare", run, "--probe", "stream_mean", "--json")
    assert compared.exit_code == 0, compared.output
    data = json.loads(compared.stdout)
    assert data["runs"][0]["layout"] == "peri+scalenorm" and len(data["runs"][0]["profile"]["values"]) == 2
    swept = invoke("sweep", "peri.yaml", "--grid", "model.norm=peri,pre", "--jobs", "2", "--quiet")
    assert swept.exit_code == 0, swept.output
    cells = sorted(p.name for p in (folder / "runs" / "peri").glob("*/meta.json"))
    assert len(cells) == 2
    generated = invoke("generate", run, "--prompt", "\x01\x02", "--max-new-tokens", "4", "--plugin",
                       "my_norms.py")
    assert generated.exit_code == 0, generated.output


def small_scale(seeds=1, **suite_params):
    model = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16}
    data = {"source": "synthetic", "task": "copy", "vocab_size": 16}
    return dataclasses.replace(
        SCALES["tiny"], name="test", seeds=seeds, init_seeds=1, suite_params=suite_params,
        train={"model": model, "data": data,
               "train": {"steps": 4, "batch_size": 4, "seq_len": 16, "eval_every": 2, "eval_batches": 1},
               "log": {"grad_every": 2}},
        init={"model": model, "data": data,
              "train": {"steps": 1, "batch_size": 4, "seq_len": 16, "eval_every": 1, "eval_batches": 1},
              "log": {"grad_every": 1}})


def test_the_layouts_suite_takes_a_plugin_layout(folder):
    scale = small_scale(layouts=layouts_suite.Params(depth=2, seeds=1, lrs=(1e-3, 1e-2)))
    outcome = reproduce("layouts", scale, out=folder / "repro", plugins=["my_norms.py"],
                        layouts=["post", "pre", "peri"])
    assert not outcome.failed and outcome.trained == 3 * 1 + 3 * 2 + 2  # + Pre-LN with DyT at each lr
    report = (folder / "repro" / "layouts" / "report.md").read_text()
    assert "Peri-LN" in report and "peri: x = x + LN_out(F(LN(x))) (a test plugin)" in report
    assert (folder / "repro" / "runs" / "train" / "peri-L2-adam-lr0.01-w0-s0" / "meta.json").exists()


@pytest.mark.parametrize("text, expected", [
    ("def broken(:\n", "my_norms.py (line 1): SyntaxError"),
    ("raise RuntimeError('no GPU here')\n", "my_norms.py (line 1): RuntimeError: no GPU here"),
    ("from lnexp.core.layouts import Layout, register_layout\n"
     "register_layout(Layout('post', 'x', 'y', 'z'))\n",
     "my_norms.py (line 2): ValueError: layout 'post' is built in; give yours another name"),
])
def test_a_broken_plugin_is_one_line_with_exit_code_2_and_nothing_written(folder, text, expected):
    (folder / "my_norms.py").write_text(text)
    result = invoke("train", "peri.yaml", "--quiet")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and expected in result.output
    assert "peri.yaml: plugins:" in result.output
    assert not (folder / "runs").exists()


def test_a_missing_plugin_names_its_flag(folder):
    missing = invoke("train", "peri.yaml", "--plugin", "nowhere.py", "--quiet")
    assert missing.exit_code == 2 and missing.output.startswith("error: --plugin: ")
    assert "nowhere.py" in missing.output
    assert not (folder / "runs").exists()


def test_an_unknown_layout_names_the_registry(folder):
    result = invoke("train", "peri.yaml", "--set", "model.norm=nope", "--quiet")
    assert result.exit_code == 2 and "--set model.norm: must be one of 'post', 'pre'" in result.output
    assert "'peri'" in result.output


def test_a_plugin_suite_is_listed_and_reproduced_and_may_not_take_a_built_in_name(folder):
    (folder / "my_claim.py").write_text(SUITE_PLUGIN)
    unknown = invoke("reproduce", "peri-claim")
    assert unknown.exit_code == 2 and "unknown suite 'peri-claim'" in unknown.output
    listed = invoke("reproduce", "list", "--plugin", "my_norms.py", "--plugin", "my_claim.py")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[-1] == "peri-claim: Peri-LN trains as well as Post-LN"
    outcome = reproduce("peri-claim", small_scale(seeds=2), out=folder / "repro",  # an interval needs 2
                        plugins=["my_norms.py", "my_claim.py"])
    assert not outcome.failed and outcome.trained == 4
    verdicts = json.loads((folder / "repro" / "peri-claim" / "verdicts.json").read_text())["rows"]
    assert [v["claim"] for v in verdicts] == ["Peri-LN ends no worse than Post-LN"]
    assert verdicts[0]["verdict"] == "reproduced" and all(isinstance(x, float) for x in verdicts[0]["values"])
    assert "peri-claim" in (folder / "repro" / "report.md").read_text()
    (folder / "taken.py").write_text(SUITE_PLUGIN.replace('Suite("peri-claim"', 'Suite("depth"'))
    taken = invoke("reproduce", "list", "--plugin", "my_norms.py", "--plugin", "taken.py")
    assert taken.exit_code == 2 and taken.output.count("\n") == 1
    assert "ValueError: suite 'depth' is built in; give yours another name" in taken.output
