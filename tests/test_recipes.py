"""Every init recipe against its source's formula, parameter by parameter (d_model 256)."""

import dataclasses
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ModelConfig, validate
from lnexp.core.model import PAD, build_model
from lnexp.core.recipes import RECIPES
from lnexp.run.reader import load_run

D, D_FF, V, L = 256, 1024, 512, 2


def uniform_std(bound: float) -> float:
    return bound / math.sqrt(3)


def xavier_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def expected_weight_std(recipe: str, name: str, shape: tuple[int, ...]) -> float | None:
    """The formula of each role, written from the sources (docs/recipes.md), not from lnexp's code.
    None: a norm's weight, which must be exactly 1."""
    if "norm" in name:
        return None
    if name in ("tok_emb.weight", "pos_emb.weight"):
        return {"fairseq": D**-0.5, "gpt2": 0.02, "torch": 1.0, "xavier_per_proj": D**-0.5}[recipe]
    fan_out, fan_in = shape
    if recipe == "gpt2":
        return 0.02
    if recipe == "torch":  # kaiming_uniform(a=√5): U(±1/√fan_in)
        return uniform_std(1 / math.sqrt(fan_in))
    if name == "head.weight" and recipe == "fairseq":
        return D**-0.5
    qkv = name.rsplit(".", 2)[-2] in ("q", "k", "v")
    return xavier_std(fan_in, fan_out, 2**-0.5 if qkv and recipe == "fairseq" else 1.0)


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_parameter_follows_its_recipes_formula(recipe, arch):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=L, d_model=D, n_heads=4, d_ff=D_FF, init=recipe, arch=arch,
                      positional="learned", tie_embeddings=False)
    model = build_model(cfg, V)
    checked = 0
    for name, param in model.named_parameters():
        if name.endswith(".bias"):
            qkv_bias = name.rsplit(".", 2)[-2] in ("q", "k", "v") and recipe == "fairseq"
            if "norm" in name or (recipe != "torch" and not qkv_bias):
                assert torch.all(param == 0), name
            else:  # PyTorch's bias: U(±1/√fan_in); fairseq leaves q, k, v's so
                bound = 1 / math.sqrt(dict(model.named_parameters())[name[:-4] + "weight"].shape[1])
                assert param.abs().max() <= bound
                assert param.std().item() == pytest.approx(uniform_std(bound), rel=0.15)
            continue
        expected = expected_weight_std(recipe, name, tuple(param.shape))
        if expected is None:
            assert torch.all(param == 1), name
            continue
        values = param
        if name == "tok_emb.weight" and model.tok_emb.padding_idx is not None:
            assert torch.all(param[PAD] == 0), "the padding row is zero"
            values = torch.cat([param[:PAD], param[PAD + 1:]])
        assert values.std().item() == pytest.approx(expected, rel=0.03), name
        assert abs(values.mean().item()) < 0.05 * expected + 1e-4, name
        checked += 1
    assert checked >= 6 * L + 2


def test_padding_row_is_fairseqs_in_the_encoder_decoder_only():
    def model(init: str, arch: str) -> nn.Module:
        return build_model(ModelConfig(n_layers=1, d_model=32, n_heads=4, d_ff=64, init=init, arch=arch), 40)

    assert model("fairseq", "encoder_decoder").tok_emb.padding_idx == PAD
    assert model("fairseq", "decoder").tok_emb.padding_idx is None  # a byte LM has no padding token
    assert model("xavier_per_proj", "encoder_decoder").tok_emb.padding_idx is None  # as lnexp 0.1 was


def test_the_recipe_decides_tying_and_positions_unless_the_config_does():
    fairseq, gpt2 = ModelConfig(), ModelConfig(init="gpt2")
    assert fairseq.init == "fairseq" and not fairseq.tie_embeddings and fairseq.positional == "sinusoidal"
    assert gpt2.tie_embeddings and gpt2.positional == "learned"
    assert ModelConfig(init="gpt2", tie_embeddings=False, positional="sinusoidal").tie_embeddings is False
    # a config from lnexp 0.1 keeps its meaning
    old = validate({"model": {"init": "xavier", "tie_embeddings": True, "positional": "learned"}}).model
    assert old.init == "xavier_per_proj"


def test_xavier_per_proj_is_lnexp_0_1s_xavier_bit_for_bit(monkeypatch):
    def lnexp_0_1_init_weights(model: nn.Module, d_model: int) -> None:  # as lnexp 0.1 wrote it
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=d_model**-0.5)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, init="xavier")
    torch.manual_seed(3)
    model = build_model(cfg, 50)
    with monkeypatch.context() as patch:
        patch.setitem(RECIPES, "xavier_per_proj",
                      dataclasses.replace(RECIPES["xavier_per_proj"], init=lnexp_0_1_init_weights))
        torch.manual_seed(3)
        old = build_model(cfg, 50)
    assert model.state_dict().keys() == old.state_dict().keys()
    assert all(torch.equal(value, old.state_dict()[name]) for name, value in model.state_dict().items())
    assert model.embed_scale == math.sqrt(32) and model.head is None


def test_the_run_records_its_recipe(tmp_path, write_config):
    result = CliRunner().invoke(app, ["train", str(write_config(run={"name": "r"})), "--quiet"])
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / "r")
    assert run.meta["init_recipe"]["name"] == "fairseq"
    assert "multihead_attention.py" in run.meta["init_recipe"]["source"]
    assert run.config["model"]["tie_embeddings"] is False and run.config["model"]["init"] == "fairseq"
