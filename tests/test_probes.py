import pytest
import torch

from lnexp.config import ModelConfig
from lnexp.model import TransformerLM
from lnexp.probes import Probes, split_name, tensor_norms


def setup(kinds=("grad", "act"), norm="post"):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64, norm=norm), 40)
    return model, Probes(model, list(kinds))


def test_grad_norms_match_naive_per_parameter_computation():
    for norm in ("post", "pre"):
        model, probes = setup(norm=norm)
        probes.arm()
        _, loss = model(torch.randint(40, (4, 12)), torch.randint(40, (4, 12)))
        loss.backward()
        reading = probes.read(step=7)
        got = {(r["layer"], r["param"]): r["value"] for r in reading.rows if r["probe"] == "grad"}
        naive = {split_name(n): p.grad.norm().item() for n, p in model.named_parameters()}
        assert got.keys() == naive.keys()
        for key, value in naive.items():
            assert abs(got[key] - value) <= 1e-6 * max(value, 1e-12), key
        total = sum(v**2 for v in naive.values()) ** 0.5
        assert abs(reading.grad_norm_total - total) <= 1e-6 * total
        assert all(r["step"] == 7 for r in reading.rows)


def test_activation_norms_are_the_residual_stream_rms_by_layer():
    model, probes = setup(kinds=["act"], norm="pre")
    idx = torch.randint(40, (2, 8))
    expected, x = [], None
    with torch.no_grad():
        x = model.tok_emb(idx) * model.embed_scale + model.pos_emb.weight[:8]
        for block in model.blocks:
            expected.append(x.pow(2).mean().sqrt().item())
            x = block(x)
        expected.append(x.pow(2).mean().sqrt().item())
    probes.arm()
    model(idx)
    rows = probes.read(step=0).rows
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    assert [r["value"] for r in rows] == [pytest.approx(v, rel=1e-5) for v in expected]


def test_hooks_exist_only_during_a_logging_step():
    model, probes = setup()
    probes.arm()
    assert all(len(b._forward_pre_hooks) == 1 for b in model.blocks)
    model(torch.randint(40, (1, 4)))[0].sum().backward()
    probes.read(0)
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)


def test_missing_gradient_counts_as_zero():
    model, probes = setup(kinds=["grad"])
    rows = probes.read(0).rows
    assert rows and all(r["value"] == 0.0 for r in rows)


def test_tensor_norms_fallback_agrees_with_linalg(monkeypatch):
    tensors = [torch.randn(5, 3), torch.randn(7)]
    fast = tensor_norms(tensors)
    monkeypatch.delattr(torch, "_foreach_norm")
    slow = tensor_norms(tensors)
    assert torch.allclose(fast, slow) and torch.allclose(slow[1], torch.linalg.vector_norm(tensors[1]))


def test_split_name():
    assert split_name("blocks.11.ffn.fc2.weight") == (11, "ffn.fc2.weight")
    assert split_name("tok_emb.weight") == (None, "tok_emb.weight")
