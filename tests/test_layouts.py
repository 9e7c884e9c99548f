"""The layouts of `model.norm` (lnexp/core/layouts.py), `model.norm_type` and their init constants.

Each wiring is checked by recomputing a block's output from its own modules, so a test says exactly
which tensor is normalised where.
"""

import copy
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ConfigError, ModelConfig, validate
from lnexp.core.model import Attention, KVCache, TransformerLM
from lnexp.decode import search as dec
from lnexp.run.probes import split_name
from lnexp.run.reader import load_run

LAYOUTS = ["post", "pre", "sandwich", "deepnorm", "admin"]
V = 50


def make(**kw) -> TransformerLM:
    torch.manual_seed(0)
    base = dict(n_layers=4, d_model=32, n_heads=4, d_ff=64, max_seq_len=16)
    return TransformerLM(ModelConfig(**{**base, **kw}), vocab_size=V)


def wild(seed: int = 1) -> torch.Tensor:
    """A block input far from normalised, so a norm's effect is visible."""
    return torch.randn(3, 8, 32, generator=torch.Generator().manual_seed(seed)) * 5 + 2


def is_normalised(y: torch.Tensor) -> bool:
    return (torch.allclose(y.mean(-1), torch.zeros(y.shape[:-1]), atol=1e-4)
            and torch.allclose(y.var(-1, unbiased=False), torch.ones(y.shape[:-1]), atol=1e-3))


def block_names(model: TransformerLM) -> set[str]:
    return {n.split(".", 2)[2] for n, _ in model.named_parameters() if n.startswith("blocks.0.")}


# --- wiring ---------------------------------------------------------------------------------------

def test_parameter_names_post_pre_deepnorm_shared_and_extras_named():
    post = block_names(make(norm="post"))
    assert block_names(make(norm="pre")) == post == block_names(make(norm="deepnorm"))
    assert block_names(make(norm="sandwich")) - post == {"attn_out_norm.weight", "attn_out_norm.bias",
                                                         "ffn_out_norm.weight", "ffn_out_norm.bias"}
    assert block_names(make(norm="admin")) - post == {"attn_skip", "ffn_skip"}
    for norm in LAYOUTS:
        assert (make(norm=norm).final_norm is not None) == (norm in ("pre", "sandwich")), norm


@pytest.mark.parametrize("norm", ["deepnorm", "admin"])
def test_deepnorm_and_admin_normalise_the_scaled_skip_plus_branch(norm):
    block = make(norm=norm).blocks[0]
    x = wild()
    y = block(x)
    assert is_normalised(y)
    skip_a, skip_f = (s if isinstance(s, float) else s.item() for s in (block.attn_skip, block.ffn_skip))
    assert skip_a > 1 and skip_f > 1
    h = block.attn_norm(skip_a * x + block.attn(x))
    assert torch.allclose(y, block.ffn_norm(skip_f * h + block.ffn(h)), atol=1e-5)


def test_deepnorm_with_alpha_one_is_post_ln():
    deep, post = make(norm="deepnorm"), make(norm="post")
    post.load_state_dict(deep.state_dict())  # same names and shapes: only the init and alpha differ
    x, idx = wild(), torch.randint(V, (2, 12))
    assert not torch.allclose(deep(idx)[0], post(idx)[0], atol=1e-3)
    for block in deep.blocks:
        block.attn_skip = block.ffn_skip = 1.0
    block = deep.blocks[0]
    h = block.attn_norm(x + block.attn(x))
    assert torch.allclose(block(x), block.ffn_norm(h + block.ffn(h)), atol=1e-5)
    assert torch.allclose(deep(idx)[0], post(idx)[0], atol=1e-5)


def test_deepnorm_alpha_is_a_constant_not_a_parameter():
    model = make(norm="deepnorm", n_layers=6)
    assert all(b.attn_skip == b.ffn_skip == pytest.approx(12 ** 0.25) for b in model.blocks)
    assert not any("skip" in n for n, _ in model.named_parameters())


def test_sandwich_normalises_each_branch_output_not_the_block_output():
    block = make(norm="sandwich").blocks[0]
    x = wild()
    seen = []
    for out_norm in (block.attn_out_norm, block.ffn_out_norm):
        out_norm.register_forward_hook(lambda m, a, out: seen.append(out))
    y = block(x)
    assert len(seen) == 2 and all(is_normalised(s) for s in seen)
    assert y.var(-1, unbiased=False).mean() > 5  # the stream's scale passes through
    h = x + block.attn_out_norm(block.attn(block.attn_norm(x)))
    assert torch.allclose(y, h + block.ffn_out_norm(block.ffn(block.ffn_norm(h))), atol=1e-5)


def test_sandwich_without_its_out_norms_is_pre_ln():
    sandwich, pre = make(norm="sandwich"), make(norm="pre")
    state = {k: v for k, v in sandwich.state_dict().items() if "out_norm" not in k}
    pre.load_state_dict(state)  # strict: every pre parameter comes from the sandwich model
    for block in sandwich.blocks:
        block.attn_out_norm = block.ffn_out_norm = None
    x, idx = wild(), torch.randint(V, (2, 12))
    block = sandwich.blocks[0]
    h = x + block.attn(block.attn_norm(x))
    assert torch.allclose(block(x), h + block.ffn(block.ffn_norm(h)), atol=1e-5)
    assert torch.allclose(sandwich(idx)[0], pre(idx)[0], atol=1e-5)


def test_admin_skip_is_a_trainable_scalar_per_sublayer_and_probes_see_it():
    model = make(norm="admin", n_layers=3)
    _, loss = model(torch.randint(V, (2, 8)), torch.randint(V, (2, 8)))
    loss.backward()
    grads = {split_name(n): p.grad for n, p in model.named_parameters()}  # the probes' naming
    for layer, block in enumerate(model.blocks):
        for name in ("attn_skip", "ffn_skip"):
            param = getattr(block, name)
            assert isinstance(param, nn.Parameter) and param.shape == () and param.requires_grad
            assert grads[layer, name].abs() > 0


# --- init constants -------------------------------------------------------------------------------

def test_deepnorm_init_scales_v_out_fc1_fc2_by_beta_and_keeps_q_k():
    n_layers = 6
    beta = 48 ** -0.25  # (8M)^(-1/4)
    deep, post = make(norm="deepnorm", n_layers=n_layers), make(norm="post", n_layers=n_layers)
    post_state = post.state_dict()
    for name, value in deep.state_dict().items():  # same seed, same draws: the ratio is exact
        scaled = name.endswith(("attn.v.weight", "attn.out.weight", "ffn.fc1.weight", "ffn.fc2.weight"))
        assert torch.allclose(value, post_state[name] * (beta if scaled else 1.0)), name
    # and the stds themselves, under GPT-2's N(0, 0.02)
    deep = make(norm="deepnorm", n_layers=n_layers, init="gpt2", d_model=64, d_ff=256)

    def std(suffix: str) -> float:
        return torch.cat([p.flatten() for n, p in deep.named_parameters() if n.endswith(suffix)]).std().item()

    for suffix in ("attn.v.weight", "attn.out.weight", "ffn.fc1.weight", "ffn.fc2.weight"):
        assert std(suffix) == pytest.approx(0.02 * beta, rel=0.05), suffix
    for suffix in ("attn.q.weight", "attn.k.weight"):
        assert std(suffix) == pytest.approx(0.02, rel=0.05), suffix


def test_admin_closed_form_omega():
    model = make(norm="admin", n_layers=6)
    # N = 2 * 6 = 12 residual sub-layers: sqrt(13 / ln 13 - 1)
    assert math.sqrt(13 / math.log(13) - 1) == pytest.approx(2.0170092, abs=1e-6)
    for block in model.blocks:
        assert block.attn_skip.item() == pytest.approx(2.0170092, abs=1e-6)
        assert block.ffn_skip.item() == pytest.approx(2.0170092, abs=1e-6)


def test_admin_profile_follows_the_documented_rule():
    model = make(norm="admin", admin_init="profile", dropout=0.1)
    assert all(b.attn_skip.item() == 1.0 for b in model.blocks)  # plain Post-LN until profiled
    idx = torch.randint(V, (4, 16), generator=torch.Generator().manual_seed(3))
    # the rule by hand: one omega = 1, no-dropout pass; omega_i = sqrt(1 + sum_{j<i} Var[f_j])
    expected, total = [], 1.0
    model.eval()  # no dropout (attention's included)
    with torch.no_grad():
        x = model.embed(idx)
        for block in model.blocks:
            for branch, norm in ((block.attn, block.attn_norm), (block.ffn, block.ffn_norm)):
                f = branch(x)
                expected.append(math.sqrt(total))
                total += f.var(unbiased=False).item()
                x = norm(x + f)
    model.train()
    omegas = model.admin_profile_(idx)
    assert omegas == pytest.approx(expected, rel=1e-5) and omegas[0] == 1.0
    assert omegas == sorted(omegas) and omegas[-1] > 1.2
    got = [s.item() for b in model.blocks for s in (b.attn_skip, b.ffn_skip)]
    assert got == pytest.approx(expected, rel=1e-5)
    assert model.training and all(not b.attn._forward_hooks and not b.ffn._forward_hooks
                                  for b in model.blocks)
    with pytest.raises(ValueError, match="admin"):
        make(norm="post").admin_profile_(idx)


@pytest.mark.parametrize("norm", ["post", "pre", "sandwich"])
def test_gpt2_residual_scaling_still_applies(norm):
    model = make(norm=norm, init="gpt2", residual_scaling="gpt2", n_layers=8, d_model=64, d_ff=256)
    fc2 = torch.cat([b.ffn.fc2.weight.flatten() for b in model.blocks]).std().item()
    fc1 = torch.cat([b.ffn.fc1.weight.flatten() for b in model.blocks]).std().item()
    assert fc2 == pytest.approx(0.02 / 4, rel=0.05) and fc1 == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("changes,key", [
    ({"norm": "deepnorm", "residual_scaling": "gpt2"}, "model.residual_scaling"),
    ({"norm": "admin", "residual_scaling": "gpt2"}, "model.residual_scaling"),
    ({"norm": "post", "admin_init": "profile"}, "model.admin_init"),
])
def test_refused_combinations_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=f"^c.yaml: {key}: "):
        validate({"model": changes}, source="c.yaml")


def test_accepted_combinations():
    for model in ({"norm": "sandwich", "residual_scaling": "gpt2"},
                  {"norm": "admin", "admin_init": "profile"}, {"norm": "deepnorm", "norm_type": "rmsnorm"}):
        assert validate({"model": model}).model.norm == model["norm"]


# --- norm_type ------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", LAYOUTS)
def test_rmsnorm_is_used_for_every_norm(norm):
    model = make(norm=norm, norm_type="rmsnorm")
    kinds = [type(m) for m in model.modules()]
    assert nn.LayerNorm not in kinds
    per_block = 4 if norm == "sandwich" else 2
    assert kinds.count(nn.RMSNorm) == 4 * per_block + (norm in ("pre", "sandwich"))
    assert not any(n.endswith("norm.bias") for n, _ in model.named_parameters())
    layernorm = make(norm=norm)
    assert [type(m) for m in layernorm.modules()].count(nn.LayerNorm) == kinds.count(nn.RMSNorm)


def test_rmsnorm_block_output_has_unit_rms_not_zero_mean():
    y = make(norm="post", norm_type="rmsnorm").blocks[0](wild())
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 8), atol=1e-3)
    assert y.mean(-1).abs().max() > 1e-3  # RMSNorm does not centre


# --- decoding and training ------------------------------------------------------------------------

@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("norm", [*LAYOUTS, "peri_ln", "lns"])
def test_cached_decoding_equals_uncached(norm, norm_type, qk_norm):
    model = make(norm=norm, norm_type=norm_type, qk_norm=qk_norm, n_layers=2).eval()
    x = torch.randint(V, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)[0]
        cache = KVCache(len(model.blocks))
        parts = [model(x[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 6), (6, 10), (10, 12))]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    if norm_type == "layernorm":
        cached = dec.decode(model, [4, 8, 15], "greedy", max_new_tokens=8)
        plain = dec.decode(model, [4, 8, 15], "greedy", max_new_tokens=8, use_cache=False)
        assert [o.ids for o in cached] == [o.ids for o in plain]


@pytest.mark.parametrize("norm,extra", [("post", []), ("pre", []), ("sandwich", ["model.norm_type=rmsnorm"]),
                                        ("deepnorm", []), ("admin", ["model.admin_init=profile"])])
def test_one_training_step_via_the_cli(tmp_path, write_config, norm, extra):
    path = write_config(train={"steps": 1, "eval_every": 1, "eval_batches": 1}, run={"name": "r"})
    args = ["--set", f"model.norm={norm}"] + [a for item in extra for a in ("--set", item)]
    result = CliRunner().invoke(app, ["train", str(path), "--quiet", *args])
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / "r")
    assert run.meta["status"] == "completed" and run.config["model"]["norm"] == norm
    assert all(math.isfinite(m["loss"]) for m in run.metrics if m["loss"] is not None)


# --- the registry's newer layouts: Mix-LN, reordered (OLMo 2), DyT ----------------------------------

def test_reordered_norms_the_branch_output_only():
    model = make(norm="reordered")
    block = model.blocks[0]
    x = wild()
    h = x + block.attn_norm(block.attn(x))
    expected = h + block.ffn_norm(block.ffn(h))
    assert torch.allclose(block(x), expected, atol=1e-5)
    assert block.attn_out_norm is None and block.attn_skip is None and model.final_norm is not None


@pytest.mark.parametrize("ratio, n_post", [(0.25, 2), (0.5, 4), (0.0, 0), (1.0, 8)])
def test_mix_ln_is_post_ln_in_its_first_layers_and_pre_ln_after_gradients_included(ratio, n_post):
    """Mix-LN at initialisation equals, loss and every gradient, a stack built by hand from Post-LN
    blocks for the first ⌊α·L⌋ layers and Pre-LN blocks after, with a final norm."""
    from lnexp.core.layouts import Stack
    from lnexp.core.model import Block

    mix = make(norm="mix", n_layers=8, mix_ratio=ratio)
    assert [b.layout.name for b in mix.blocks] == ["post"] * n_post + ["pre"] * (8 - n_post)
    cfg_post = ModelConfig(n_layers=8, d_model=32, n_heads=4, d_ff=64, max_seq_len=16, norm="post")
    by_hand = make(norm="pre", n_layers=8)
    for i in range(n_post):
        by_hand.blocks[i] = Block(cfg_post, Stack(8, 2, "lm"), i)
    by_hand.load_state_dict(mix.state_dict())
    x = torch.randint(V, (4, 16), generator=torch.Generator().manual_seed(3))
    losses = [m(x, x)[1] for m in (mix, by_hand)]
    for loss in losses:
        loss.backward()
    assert torch.equal(losses[0], losses[1])
    for (name, p), q in zip(mix.named_parameters(), by_hand.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_mix_ratio_and_dyt_alpha_belong_to_their_layout_and_norm():
    with pytest.raises(ConfigError, match=r"mix_ratio: applies only to model.norm mix, got model.norm pre"):
        validate({"model": {"norm": "pre", "mix_ratio": 0.5}})
    with pytest.raises(ConfigError, match=r"model.dyt_alpha: applies only to model.norm_type dyt"):
        validate({"model": {"dyt_alpha": 1.0}})


@pytest.mark.parametrize("norm", ["post", "pre", "mix", "reordered"])
def test_dyt_replaces_every_norm_with_a_learnable_alpha(norm):
    model = make(norm=norm, norm_type="dyt", dyt_alpha=0.7)
    dyts = [m for m in model.modules() if type(m).__name__ == "DyT"]
    assert dyts and not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for m in model.modules())
    block = model.blocks[0]
    x = wild()
    assert torch.allclose(block.attn_norm(x), torch.tanh(0.7 * x))  # γ = 1, β = 0 at init
    assert block.attn_norm.alpha.requires_grad and block.attn_norm.alpha.item() == pytest.approx(0.7)
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    model(torch.randint(V, (2, 8)), torch.randint(V, (2, 8)))[1].backward()
    assert block.attn_norm.alpha.grad is not None and block.attn_norm.alpha.grad != 0


def test_new_layouts_train_on_the_smoke_config_and_dyt_alpha_is_in_the_probes(tmp_path):
    runner = CliRunner()
    for norm, norm_type in (("mix", "layernorm"), ("reordered", "layernorm"), ("pre", "dyt")):
        result = runner.invoke(app, ["train", "configs/smoke.yaml", "--set", f"model.norm={norm}",
                                     "--set", f"model.norm_type={norm_type}", "--set", "model.n_layers=4",
                                     "--set", "train.steps=20", "--set", f"run.dir={tmp_path}",
                                     "--set", f"run.name={norm}-{norm_type}", "--quiet"])
        assert result.exit_code == 0, result.output
        run = load_run(tmp_path / f"{norm}-{norm_type}")
        assert run.status == "completed" and run.summary["final_val_loss"] < math.log(256)
        if norm_type == "dyt":
            alphas = [r for r in run.probes if r["probe"] == "grad" and r["param"] == "attn_norm.alpha"]
            assert len(alphas) == 4 * len({r["step"] for r in alphas}) and all(r["value"] > 0 for r in alphas)


def test_each_built_in_layout_name_is_a_literal_only_in_its_declaration():
    """One home per layout: every other module of lnexp/ derives from lnexp/core/layouts.py."""
    import ast
    from pathlib import Path

    import lnexp
    from lnexp.core.layouts import LAYOUTS

    found: dict[str, set[str]] = {name: set() for name in LAYOUTS.built_in}
    root = Path(lnexp.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in found:
                found[node.value].add(str(path.relative_to(root)))
    assert found == {name: {"core/layouts.py"} for name in LAYOUTS.built_in}


@pytest.mark.parametrize("name", ["sandwich-0.2.0", "admin-encdec-0.2.0"])
def test_a_run_folder_from_lnexp_0_2_0_still_loads_and_its_model_means_the_same(tmp_path, name):
    """Written by lnexp 0.2.0 (before the layout registry): today's code reads the folder, loads
    model.pt into the model its config builds, and recomputes the recorded final validation loss."""
    import shutil
    from pathlib import Path

    from lnexp.core.model import build_model
    from lnexp.data.sources import load_data

    path = shutil.copytree(Path(__file__).parent / "data" / "runs-0.2.0" / name, tmp_path / name)
    run = load_run(path)
    assert run.status == "completed" and not run.notes
    config = validate(run.config)
    data = load_data(config.data, config.model.arch)
    model = build_model(config.model, data.vocab_size)
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True))  # strict: same names
    model.eval()
    t = config.train
    generator = torch.Generator().manual_seed(t.seed + 1)  # the trainer's validation batches
    with torch.no_grad():
        losses = [model(*data.batch("val", t.batch_size, t.seq_len, generator))[1]
                  for _ in range(t.eval_batches)]
    assert torch.stack(losses).mean().item() == pytest.approx(run.summary["final_val_loss"], rel=1e-6)
    compared = CliRunner().invoke(app, ["compare", str(path), "--json"])
    assert compared.exit_code == 0, compared.output


def test_every_recipe_resets_a_dyt_norm_like_a_layernorm():
    """The recipes re-initialise every norm, DyT's (and a plugin's) included: γ = 1, β = 0, α = α₀."""
    from lnexp.core.recipes import RECIPES

    for init in RECIPES:
        model = make(norm="pre", norm_type="dyt", dyt_alpha=0.7, init=init)
        dyts = [m for m in model.modules() if type(m).__name__ == "DyT"]
        for dyt in dyts:
            with torch.no_grad():
                dyt.alpha.fill_(3.0), dyt.weight.fill_(2.0), dyt.bias.fill_(1.0)
        model.recipe.init(model, model.cfg.d_model)
        assert all(d.alpha.item() == pytest.approx(0.7) and torch.all(d.weight == 1)
                   and torch.all(d.bias == 0) for d in dyts), init


# --- issue #26: LayerNorm Scaling, Peri-LN, QK-norm ----------------------------------------------------

def loss_and_grads(model: TransformerLM, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def by_hand(model: TransformerLM, idx: torch.Tensor, embed_norm=None, input_scale=lambda i: 1.0,
            out_norms: bool = False) -> torch.Tensor:
    """A Pre-LN stack's loss computed from `model`'s own modules: the embedding (through `embed_norm`
    if given), each sub-layer x + [LN_out](F(LN(x)·input_scale(layer))), the final norm."""
    x = model.embed(idx)
    x = embed_norm(x) if embed_norm is not None else x
    for i, block in enumerate(model.blocks):
        for name in ("attn", "ffn"):
            y = getattr(block, name)(getattr(block, f"{name}_norm")(x) * input_scale(i))
            x = x + (getattr(block, f"{name}_out_norm")(y) if out_norms else y)
    logits = model.logits(model.final_norm(x))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())


def test_layernorm_scaling_equals_a_hand_built_pre_ln_stack_with_scaled_norm_outputs():
    """LayerNorm Scaling (Sun et al. 2025): each branch-input norm's output × 1/√l, l = 1, 2, ...;
    the final norm unscaled. Loss and every gradient at init, against Pre-LN's modules by hand."""
    lns, pre = make(norm="lns", n_layers=4), make(norm="pre", n_layers=4)
    assert block_names(lns) == block_names(pre)
    assert [b.input_scale for b in lns.blocks] == pytest.approx([1, 2**-0.5, 3**-0.5, 0.5])
    pre.load_state_dict(lns.state_dict())  # same names: only the wiring differs
    idx = torch.randint(V, (4, 16), generator=torch.Generator().manual_seed(3))
    got = loss_and_grads(lns, lns(idx, idx)[1])
    expected = loss_and_grads(pre, by_hand(pre, idx, input_scale=lambda i: 1 / math.sqrt(i + 1)))
    assert torch.allclose(got[0], expected[0], atol=1e-6)
    for name, grad in got[1].items():
        assert torch.allclose(grad, expected[1][name], atol=1e-6), name
    assert not torch.allclose(lns(idx, idx)[1], pre(idx, idx)[1])  # the scaling does change the loss


def test_layernorm_scaling_refuses_gpt2_scaled_init_with_its_reason():
    with pytest.raises(ConfigError, match=r"^c.yaml: model.residual_scaling: must be none with model.norm "
                                          r"lns \(its source trains without scaled initialisation\)"):
        validate({"model": {"norm": "lns", "residual_scaling": "gpt2"}}, source="c.yaml")
    assert validate({"model": {"norm": "lns", "init": "gpt2"}}).model.norm == "lns"


def test_peri_ln_is_sandwich_ln_with_a_norm_on_the_embedding():
    """Peri-LN (Kim et al. 2025): x + LN_out(F(LN(x))) on every sub-layer, LN on the embedding output,
    a final LN. Loss and every gradient at init, against Sandwich-LN's modules by hand."""
    peri, sandwich = make(norm="peri_ln"), make(norm="sandwich")
    names = {n for n, _ in peri.named_parameters()}
    assert names - {n for n, _ in sandwich.named_parameters()} == {"embed_norm.weight", "embed_norm.bias"}
    sandwich.load_state_dict({k: v for k, v in peri.state_dict().items() if not k.startswith("embed_norm")})
    idx = torch.randint(V, (4, 16), generator=torch.Generator().manual_seed(4))
    embed_norm = copy.deepcopy(peri.embed_norm)  # the hand-built stack's own copy, for its gradients
    got = loss_and_grads(peri, peri(idx, idx)[1])
    expected = loss_and_grads(sandwich, by_hand(sandwich, idx, embed_norm=embed_norm, out_norms=True))
    expected[1].update({f"embed_norm.{n}": p.grad for n, p in embed_norm.named_parameters()})
    assert torch.allclose(got[0], expected[0], atol=1e-6)
    for name, grad in got[1].items():
        assert torch.allclose(grad, expected[1][name], atol=1e-6), name
    assert peri.embed_norm.weight.grad.abs().sum() > 0


def test_peri_ln_norms_both_embeddings_of_an_encoder_decoder():
    from lnexp.core.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=16,
                                    norm="peri_ln", arch="encoder_decoder"), V)
    seen = {name: [] for name in ("enc_embed_norm", "dec_embed_norm")}
    for name, into in seen.items():
        getattr(model, name).register_forward_hook(lambda m, args, out, into=into: into.append(out))
    src, tgt = (torch.randint(1, V, (2, 10), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    model(src, tgt, tgt)[1].backward()
    assert all(len(outputs) == 1 and is_normalised(outputs[0]) for outputs in seen.values())
    assert all(norm.weight.grad.abs().sum() > 0 for norm in (model.enc_embed_norm, model.dec_embed_norm))


def attention_by_hand(attn, x: torch.Tensor) -> torch.Tensor:
    """Causal self-attention with each head's queries and keys through attn's q_norm and k_norm."""
    B, T, C = x.shape
    heads = (attn.n_heads, C // attn.n_heads)
    q, k, v = (proj(x).view(B, T, *heads).transpose(1, 2) for proj in (attn.q, attn.k, attn.v))
    q, k = attn.q_norm(q), attn.k_norm(k)  # over head_dim, per head
    scores = q @ k.transpose(-1, -2) / math.sqrt(heads[1])
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
def test_qk_norm_norms_each_heads_queries_and_keys(norm_type):
    model = make(norm="pre", qk_norm=True, norm_type=norm_type)
    plain = make(norm="pre", norm_type=norm_type)
    added = {n for n, _ in model.named_parameters()} - {n for n, _ in plain.named_parameters()}
    suffixes = ("weight", "bias") if norm_type == "layernorm" else ("weight",)
    assert added == {f"blocks.{i}.attn.{which}.{s}" for i in range(4) for which in ("q_norm", "k_norm")
                     for s in suffixes}
    attn = model.blocks[0].attn
    assert attn.q_norm.weight.shape == (8,)  # head_dim = 32 / 4, shared by the heads
    with torch.no_grad():  # a non-trivial γ (and β), so that a missing or misplaced norm shows
        for p in (*attn.q_norm.parameters(), *attn.k_norm.parameters()):
            p.uniform_(0.5, 1.5)
    x = wild()
    assert torch.allclose(attn(x), attention_by_hand(attn, x), atol=1e-5)
    idx = torch.randint(V, (2, 12))
    model(idx, idx)[1].backward()
    assert attn.q_norm.weight.grad.abs().sum() > 0 and attn.k_norm.weight.grad.abs().sum() > 0


def test_qk_norm_in_an_encoder_decoder_decodes_with_a_cache_as_without_and_runs_under_bf16():
    from lnexp.core.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=16,
                                    qk_norm=True, arch="encoder_decoder"), V).eval()
    src, tgt = (torch.randint(1, V, (2, 10), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    calls = []
    for stack in (model.enc, model.dec):
        for module in stack.modules():
            if isinstance(module, Attention):
                for norm in (module.q_norm, module.k_norm):
                    norm.register_forward_hook(lambda m, args, out: calls.append(m))
    with torch.no_grad():
        model(src, tgt, tgt)
        assert len(calls) == 2 * (2 + 2 * 2)  # q and k of every attention: 2 encoder, 2 × 2 decoder
        memory, mask = model.encode(src)
        full = model.decode(tgt, memory, mask)
        cache = KVCache(2, cross=True)
        parts = [model.decode(tgt[:, a:b], memory, mask, cache) for a, b in ((0, 4), (4, 5), (5, 10))]
        assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # q, k normed in float32, back to bf16
            assert torch.isfinite(model(src, tgt, tgt)[1])


@pytest.mark.parametrize("norm,extra", [("lns", []), ("peri_ln", []), ("pre", ["model.qk_norm=true"]),
                                        ("post", ["model.qk_norm=true", "model.norm_type=rmsnorm"])])
def test_the_issue_26_layouts_and_qk_norm_train_on_the_smoke_config(tmp_path, norm, extra):
    args = [a for item in extra for a in ("--set", item)]
    result = CliRunner().invoke(app, ["train", "configs/smoke.yaml", "--set", f"model.norm={norm}", *args,
                                      "--set", "model.n_layers=4", "--set", "train.steps=20",
                                      "--set", f"run.dir={tmp_path}", "--set", "run.name=r", "--quiet"])
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "r")
    assert run.status == "completed" and run.summary["final_val_loss"] < math.log(256)


def test_the_new_layouts_and_qk_norm_pack_as_they_train_alone(tmp_path):
    from lnexp.run.pack import train_pack
    from lnexp.run.train import train

    def cell(name: str, seed: int, model: dict):
        return validate({
            "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16, **model},
            "data": {"source": "synthetic", "task": "copy", "vocab_size": 16},
            "train": {"steps": 6, "batch_size": 4, "seq_len": 16, "eval_every": 5, "eval_batches": 1,
                      "seed": seed},
            "log": {"grad_every": 2, "probes": ["grad", "act", "sensitivity"]},
            "run": {"dir": str(tmp_path), "name": name}})

    for model in ({"norm": "lns"}, {"norm": "peri_ln", "qk_norm": True}):
        tag = model["norm"]
        packed = [cell(f"{tag}-packed-{s}", s, model) for s in (0, 1)]
        assert [o.status for o in train_pack(packed, ["test"] * 2, [["test"]] * 2)] == ["completed"] * 2
        for seed in (0, 1):
            assert train(cell(f"{tag}-alone-{seed}", seed, model), "test", ["test"]).status == "completed"
            losses = [[m["loss"] for m in load_run(tmp_path / f"{tag}-{how}-{seed}").metrics if m["loss"]]
                      for how in ("packed", "alone")]
            assert losses[0] == pytest.approx(losses[1], rel=1e-4), (tag, seed)
