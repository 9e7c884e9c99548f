import math

import numpy as np
import pytest
import torch

from lnexp.core.config import LogConfig, ModelConfig, validate
from lnexp.core.model import TransformerLM, untapped
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.run.probes import (
    Probes,
    feature_stats,
    mean_replace_top_dims,
    mean_replace_top_pcs,
    outlier_stats,
    radam_rho,
    split_name,
    tensor_norms,
    twonn,
)


def setup(kinds=("grad", "act"), norm="post"):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64, norm=norm), 40)
    return model, Probes(model, list(kinds))


def test_grad_norms_match_naive_per_parameter_computation():
    for norm in ("post", "pre"):
        model, probes = setup(norm=norm)
        x, y = torch.randint(40, (4, 12)), torch.randint(40, (4, 12))
        _, loss = model(x, y, tap=probes.arm(y))
        loss.backward()
        reading = probes.read(step=7)
        host = reading.values().tolist()
        got = {(r["layer"], r["param"]): r["value"] for r in reading.rows(host) if r["probe"] == "grad"}
        total = got.pop((None, "total"))
        naive = {split_name(n): p.grad.norm().item() for n, p in model.named_parameters()}
        assert got.keys() == naive.keys()
        for key, value in naive.items():
            assert abs(got[key] - value) <= 1e-6 * max(value, 1e-12), key
        naive_total = sum(v**2 for v in naive.values()) ** 0.5
        assert abs(total - naive_total) <= 1e-6 * naive_total
        assert reading.grad_norm_total(host) == total
        assert all(r["step"] == 7 for r in reading.rows(host))


def test_activation_norms_are_the_residual_stream_rms_by_layer():
    model, probes = setup(kinds=["act"], norm="pre")
    idx = torch.randint(40, (2, 8))
    expected, x = [], None
    with torch.no_grad():
        x = model.embed(idx)
        for block in model.blocks:
            expected.append(x.pow(2).mean().sqrt().item())
            x = block(x)
        expected.append(x.pow(2).mean().sqrt().item())
    model(idx, tap=probes.arm(idx))
    reading = probes.read(step=0)
    rows = reading.rows(reading.values().tolist())
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    assert [r["value"] for r in rows] == [pytest.approx(v, rel=1e-5) for v in expected]


def test_the_tap_records_only_the_pass_it_is_given_to():
    model, probes = setup(kinds=["act"])
    x = torch.randint(40, (1, 4))
    model(x)  # an ordinary step: no tap
    assert probes.read(0).keys == []
    model(x, tap=probes.arm(x))
    assert len(probes.read(1).keys) == len(model.blocks) + 1
    model(x)
    assert probes.read(2).keys == []  # read() took them
    assert Probes(model, ["grad"]).arm(x) is untapped  # nothing of the stream to record


def test_missing_gradient_counts_as_zero():
    model, probes = setup(kinds=["grad"])
    reading = probes.read(0)
    rows = reading.rows(reading.values().tolist())
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


def values_of(reading, probe):
    return {(r["layer"], r["param"]): r["value"] for r in reading.rows(reading.values().tolist())
            if r["probe"] == probe}


def test_update_ratio_and_adam_quantiles_match_direct_computation():
    model, _ = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probes = Probes(model, ["grad", "update", "adam"], optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(40, (2, 8)), torch.randint(40, (2, 8)))[1].backward()
    reading = probes.read(step=0)
    optimizer.step()
    probes.after_update(reading)
    ratios, medians = values_of(reading, "update"), values_of(reading, "adam_v_q50")
    for name, p in model.named_parameters():
        key = split_name(name)
        direct = ((p.detach() - before[name]).norm() / before[name].norm().clamp_min(1e-30)).item()
        assert ratios[key] == pytest.approx(direct, rel=1e-5, abs=1e-12)
        v = optimizer.state[p]["exp_avg_sq"]
        assert medians[key] == pytest.approx(torch.quantile(v.flatten(), 0.5).item(), rel=1e-5, abs=1e-30)
    assert set(values_of(reading, "adam_v_q10")) == set(ratios)


def test_output_change_perturbs_one_layer_at_a_time_and_restores_the_weights():
    model, probes = setup(kinds=["output_change"])
    x = torch.randint(40, (2, 8))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    reading = probes.evaluate(PROBE_KINDS["output_change"], (x, x), step=0, seed=3)
    changes = values_of(reading, "output_change")
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())  # restored exactly
    # direct: perturb layer 1 with the same signs, compare the logits
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        base = model.eval()(x)[0]
        for i, block in enumerate(model.blocks):
            params = list(block.parameters())
            deltas = [1e-2 * p.abs() * (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1)
                      for p in params]
            for p, d in zip(params, deltas):
                p.add_(d)
            direct = ((model(x)[0] - base).norm() / base.norm()).item()
            for p, d in zip(params, deltas):
                p.sub_(d)
            assert changes[(i, "logits")] == pytest.approx(direct, rel=1e-4)
    assert all(v > 0 for v in changes.values())


def test_radam_rho_follows_the_closed_form():
    beta2 = 0.999
    rho_inf = 2 / (1 - beta2) - 1
    assert radam_rho(0, beta2) == pytest.approx(rho_inf - 2 * beta2 / (1 - beta2), rel=1e-9)
    assert radam_rho(0, beta2) < 5 < radam_rho(10, beta2)  # torch's switch to adaptive steps
    assert radam_rho(100_000, beta2) == pytest.approx(rho_inf, rel=1e-6)


def test_each_probe_labels_its_work_for_the_profiler():
    """benchmarks/bench_train.py reads each probe's cost from these labels."""
    model, _ = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probes = Probes(model, ["grad", "act", "update", "adam"], optimizer)
    x = torch.randint(40, (2, 8))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model(x, x)[1].backward()  # not a logging step: no tap, nothing labelled
        optimizer.step()
        model(x, x, tap=probes.arm(x))[1].backward()
        reading = probes.read(step=1)
        optimizer.step()
        probes.after_update(reading)
        probes.evaluate(PROBE_KINDS["output_change"], (x, x), step=1)
    calls = {e.key: e.count for e in profiler.key_averages() if e.key.startswith("probe:")}
    n_blocks = len(model.blocks)
    assert calls == {"probe:act": n_blocks + 2, "probe:grad": 1, "probe:update": 2, "probe:adam": 1,
                     "probe:output_change": 1}


# --- rank and sensitivity (the feature-dimension question) -----------------------------------------

def reference_stats(x: torch.Tensor) -> tuple[float, float, float]:
    """Effective rank, participation ratio and anisotropy by the definitions, with numpy, in float64."""
    m = x.reshape(-1, x.shape[-1]).double().numpy()
    sigma = np.linalg.svd(m - m.mean(0), compute_uv=False)
    p = sigma / sigma.sum()
    p = p[p > 0]
    erank = float(np.exp(-(p * np.log(p)).sum()))
    lam = sigma**2
    pr = float(lam.sum() ** 2 / (lam**2).sum())
    u = m / np.linalg.norm(m, axis=1, keepdims=True)
    cos = u @ u.T
    n = len(m)
    return erank, pr, float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def test_feature_stats_match_an_svd_by_the_definitions():
    torch.manual_seed(1)
    x = torch.randn(6, 50, 16) @ torch.randn(16, 16)  # correlated features: ranks well below 16
    got = feature_stats(x).tolist()
    assert got == pytest.approx(reference_stats(x), rel=1e-4)


def test_feature_stats_on_inputs_whose_answer_is_known():
    torch.manual_seed(2)
    d, k, n = 32, 5, 2000
    # rank k with equal singular values: both effective ranks are exactly k
    basis = torch.linalg.qr(torch.randn(d, k))[0].T  # k orthonormal rows
    codes = torch.linalg.qr(torch.randn(n, k))[0]  # orthonormal columns, and centred below
    codes = codes - codes.mean(0)
    codes = torch.linalg.qr(codes)[0]
    erank, pr, _ = feature_stats(codes @ basis).tolist()
    assert erank == pytest.approx(k, rel=1e-3) and pr == pytest.approx(k, rel=1e-3)
    # isotropic noise: close to full rank, no preferred direction
    erank, pr, aniso = feature_stats(torch.randn(n, d)).tolist()
    assert erank > 0.95 * d and pr > 0.9 * d and abs(aniso) < 0.01
    # a constant stream (every token the same vector): no spread at all, perfectly aligned
    erank, pr, aniso = feature_stats(torch.ones(n, d) * 3).tolist()
    assert erank == 0 and pr == 0 and aniso == pytest.approx(1.0, abs=1e-6)


def stream_and_branches(model, x):
    """The Pre-LN stream entering each block and leaving the last, and each branch's output, by hand."""
    seen = {}
    with torch.no_grad():
        h = model.embed(x)
        for i, block in enumerate(model.blocks):
            seen[i, "resid"] = h
            a = block.attn(block.attn_norm(h))
            seen[i, "attn"], h = a, h + a
            f = block.ffn(block.ffn_norm(h))
            seen[i, "ffn"], h = f, h + f
        seen[len(model.blocks), "resid"] = h
    return seen


def test_rank_probe_reads_the_stream_and_every_branch_output_of_the_validation_forward():
    model, probes = setup(kinds=["rank"], norm="pre")
    x = torch.randint(40, (4, 10))
    seen = stream_and_branches(model, x)
    reading = probes.evaluate(PROBE_KINDS["rank"], (x, x), step=3)
    got = values_of(reading, "rank")
    assert len(got) == 3 * (len(model.blocks) + 1) + 2 * 3 * len(model.blocks)
    for (layer, role), tensor in seen.items():
        expected = reference_stats(tensor)
        for stat, value in zip(("erank", "pr", "aniso"), expected):
            assert got[layer, f"{role}.{stat}"] == pytest.approx(value, rel=1e-3, abs=1e-5), (layer, role)
    assert model.training  # the probe's eval-mode forward gives the mode back


def test_sensitivity_is_the_gradient_with_respect_to_the_stream_from_the_same_backward():
    model, probes = setup(kinds=["sensitivity"], norm="post")
    x, y = torch.randint(40, (3, 9)), torch.randint(40, (3, 9))
    streams = []  # the same forward by hand, each stream an explicit tensor whose .grad autograd fills
    h = model.embed(x)
    for block in model.blocks:
        h = h.detach().requires_grad_() if not streams else h
        h.retain_grad()
        streams.append(h)
        h = block(h)
    h.retain_grad()
    streams.append(h)
    torch.nn.functional.cross_entropy(model.head(h).flatten(0, 1), y.flatten()).backward()
    expected = [s.grad.norm().item() for s in streams]
    model.zero_grad()
    model(x, y, tap=probes.arm(y))[1].backward()
    got = values_of(probes.read(step=0), "sensitivity")
    assert [got[i, "dloss_dx"] for i in range(len(streams))] == pytest.approx(expected, rel=1e-5)
    # the scale-free sensitivity ‖x‖·‖∂loss/∂x‖, both over the step's whole stream
    scale_free = [s.detach().norm().item() * s.grad.norm().item() for s in streams]
    assert [got[i, "scale_free"] for i in range(len(streams))] == pytest.approx(scale_free, rel=1e-5)


def test_noise_ablation_matches_a_hand_built_one_and_is_zero_for_a_silent_layer():
    model, probes = setup(kinds=["sensitivity"], norm="pre")
    batch = (torch.randint(40, (3, 9)), torch.randint(40, (3, 9)))
    with torch.no_grad():
        model.blocks[1].attn.out.weight.zero_(), model.blocks[1].attn.out.bias.zero_()
        model.blocks[1].ffn.fc2.weight.zero_(), model.blocks[1].ffn.fc2.bias.zero_()
    got = values_of(probes.evaluate(PROBE_KINDS["sensitivity"], batch, step=0, seed=5), "sensitivity")
    assert got[1, "noise_loss_change"] == 0.0  # noise with the norm of a zero output is zero
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # by hand: replace layer 0's two branch outputs, token by token
        model.eval()
        base = model(*batch)[1].item()

        def noisy(module, args, output):
            noise = torch.randn(output.shape, generator=generator)
            return noise * output.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)

        hooks = [model.blocks[0].attn.register_forward_hook(noisy),
                 model.blocks[0].ffn.register_forward_hook(noisy)]
        ablated = model(*batch)[1].item()
        for hook in hooks:
            hook.remove()
    assert got[0, "noise_loss_change"] == pytest.approx((ablated - base) / base, rel=1e-5)
    assert got[0, "noise_loss_change"] != 0  # an untrained model: noise may help or hurt


def test_rank_sensitivity_and_ablation_label_their_work_for_the_profiler():
    model, probes = setup(kinds=["rank", "sensitivity"])
    x = torch.randint(40, (2, 8))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model(x, x)[1].backward()  # not a logging step: no tap, nothing labelled
        model(x, x, tap=probes.arm(x))[1].backward()
        probes.read(step=1)
        probes.evaluate(PROBE_KINDS["rank"], (x, x), step=1)
        probes.evaluate(PROBE_KINDS["sensitivity"], (x, x), step=1)
    calls = {e.key: e.count for e in profiler.key_averages() if e.key.startswith("probe:")}
    # making the zeros added to the stream, the stream's norm at each boundary, their gradients'
    # norms, the read
    assert calls == {"probe:sensitivity": 3 + len(model.blocks) + 1, "probe:rank": 1, "probe:ablation": 1}


# --- the feature-dimension instruments (issue #26) ---------------------------------------------------

def test_intrinsic_dim_is_twonn_of_the_layer_normalised_stream():
    model, probes = setup(kinds=["intrinsic_dim"], norm="pre")
    x = torch.randint(40, (8, 16))
    got = values_of(probes.evaluate(PROBE_KINDS["intrinsic_dim"], (x, x), step=0), "intrinsic_dim")
    streams = {layer: h for (layer, role), h in stream_and_branches(model, x).items() if role == "resid"}
    assert len(got) == 2 * len(streams)
    for layer, h in streams.items():
        normalised = (h - h.mean(-1, keepdim=True)) / h.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
        expected = twonn(normalised).tolist()
        assert [got[layer, "twonn"], got[layer, "twonn_se"]] == pytest.approx(expected, rel=1e-4), layer
        assert got[layer, "twonn"] > 1
    assert model.training


def test_the_instruments_take_at_most_4096_tokens_of_the_validation_batch():
    model = TransformerLM(ModelConfig(n_layers=1, d_model=32, n_heads=4, d_ff=64, max_seq_len=300), 40)
    probes = Probes(model, ["outliers", "rank"])
    x = torch.randint(40, (20, 300))  # 6,000 tokens: the first 13 sequences (3,900 tokens) are kept
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    probes.evaluate(PROBE_KINDS["outliers"], (x, x), step=0)
    assert seen == [torch.Size([13, 300, 32])]
    probes.evaluate(PROBE_KINDS["rank"], (x, x), step=0)  # one that does not say so: the whole batch
    assert seen[-1] == torch.Size([20, 300, 32])


def test_outliers_reads_the_stream_and_every_branch_output():
    model, probes = setup(kinds=["outliers"], norm="pre")
    x = torch.randint(40, (4, 10))
    got = values_of(probes.evaluate(PROBE_KINDS["outliers"], (x, x), step=0), "outliers")
    seen = stream_and_branches(model, x)
    assert len(got) == 2 * len(seen)
    for (layer, role), tensor in seen.items():
        expected = outlier_stats(tensor).tolist()
        assert [got[layer, f"{role}.kurtosis"], got[layer, f"{role}.max_median"]] == \
            pytest.approx(expected, rel=1e-5), (layer, role)


def test_layer_change_angles_and_skips_match_hand_built_ones():
    model, probes = setup(kinds=["layer_change"], norm="post")
    x, y = torch.randint(40, (3, 9)), torch.randint(40, (3, 9))
    got = values_of(probes.evaluate(PROBE_KINDS["layer_change"], (x, y), step=0), "layer_change")
    with torch.no_grad():
        model.eval()
        streams = [model.embed(x)]
        for block in model.blocks:
            streams.append(block(streams[-1]))

        def loss_from(h, start):
            for block in model.blocks[start:]:
                h = block(h)
            return torch.nn.functional.cross_entropy(model.logits(h).flatten(0, 1), y.flatten()).item()

        base = loss_from(streams[0], 0)
        for i in range(len(model.blocks)):
            cos = torch.nn.functional.cosine_similarity(streams[i], streams[i + 1], dim=-1)
            assert got[i, "angle"] == pytest.approx((torch.arccos(cos) / math.pi).mean().item(), rel=1e-4)
            skipped = loss_from(streams[i], i + 1)  # block i's output is its input
            assert got[i, "skip_loss_change"] == pytest.approx((skipped - base) / base, rel=1e-4, abs=1e-7)
    assert len(got) == 2 * len(model.blocks)


def test_direction_ablation_mean_replaces_at_one_boundary_with_the_configured_k():
    model, probes = setup(kinds=["direction_ablation"], norm="pre")
    x, y = torch.randint(40, (3, 9)), torch.randint(40, (3, 9))
    kind = PROBE_KINDS["direction_ablation"]
    got = values_of(probes.evaluate(kind, (x, y), step=0, log=LogConfig(direction_k=3)), "direction_ablation")
    assert len(got) == 2 * (len(model.blocks) + 1)
    with torch.no_grad():
        model.eval()

        def loss(boundary=None, ablate=None):
            h = model.embed(x)
            for i, block in enumerate(model.blocks):
                h = block(ablate(h, 3) if i == boundary else h)
            h = ablate(h, 3) if boundary == len(model.blocks) else h
            return torch.nn.functional.cross_entropy(
                model.logits(model.final_norm(h)).flatten(0, 1), y.flatten()).item()

        base = loss()
        for boundary in range(len(model.blocks) + 1):
            for param, ablate in (("top_dims_loss_change", mean_replace_top_dims),
                                  ("top_pcs_loss_change", mean_replace_top_pcs)):
                expected = (loss(boundary, ablate) - base) / base
                assert got[boundary, param] == pytest.approx(expected, rel=1e-4, abs=1e-7), (boundary, param)
    default = values_of(probes.evaluate(kind, (x, y), step=0), "direction_ablation")  # k = 4
    assert default[1, "top_dims_loss_change"] != got[1, "top_dims_loss_change"]


def test_the_instruments_label_their_work_for_the_profiler():
    kinds = ["intrinsic_dim", "outliers", "layer_change", "direction_ablation"]
    model, probes = setup(kinds=kinds)
    x = torch.randint(40, (2, 8))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model(x, x)[1].backward()  # a training step: the instruments take no part in it
        for kind in kinds:
            probes.evaluate(PROBE_KINDS[kind], (x, x), step=1)
    calls = {e.key: e.count for e in profiler.key_averages() if e.key.startswith("probe:")}
    assert calls == {f"probe:{kind}": 1 for kind in kinds}


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_the_instruments_run_at_their_schedules_in_a_training_run(tmp_path, arch):
    from lnexp.run.reader import load_run
    from lnexp.run.train import train

    kinds = ["grad", "sensitivity", "intrinsic_dim", "outliers", "layer_change", "direction_ablation"]
    data = {"source": "seq2seq", "task": "reverse"} if arch == "encoder_decoder" else \
        {"source": "synthetic", "task": "copy"}
    config = validate({
        "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16, "arch": arch},
        "data": {**data, "vocab_size": 16},
        "train": {"steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 10, "eval_batches": 1},
        "log": {"grad_every": 2, "probes": kinds, "intrinsic_dim_steps": [0, 6], "outlier_steps": [3],
                "layer_change_steps": [6], "direction_ablation_steps": [0], "direction_k": 2},
        "run": {"dir": str(tmp_path), "name": "r"}})
    assert train(config, "test", ["test"]).status == "completed"
    rows = load_run(tmp_path / "r").probes
    steps = {kind: sorted({r["step"] for r in rows if r["probe"] == kind}) for kind in kinds}
    assert steps == {"grad": [0, 2, 4, 6], "sensitivity": [0, 2, 4, 6], "intrinsic_dim": [0, 6],
                     "outliers": [3], "layer_change": [6], "direction_ablation": [0]}
    per_param = {}
    for r in rows:
        per_param.setdefault((r["probe"], r["param"]), []).append(r)
    assert len(per_param["sensitivity", "scale_free"]) == 4 * 3  # 4 logging steps, 3 boundaries
    assert len(per_param["intrinsic_dim", "twonn"]) == 2 * 3 and len(per_param["layer_change", "angle"]) == 2
    assert len(per_param["outliers", "ffn.kurtosis"]) == 2
    assert all(math.isfinite(r["value"]) for r in rows)


def test_direction_k_must_leave_directions_and_warns_without_its_probe():
    from lnexp.core.config import ConfigError, config_warnings

    with pytest.raises(ConfigError, match=r"^c.yaml: log.direction_k: must be < model.d_model \(32\)"):
        validate({"model": {"d_model": 32}, "log": {"direction_k": 32}}, source="c.yaml")
    assert config_warnings(validate({"log": {"direction_k": 2}})) == \
        ["log.direction_k: has no effect without direction_ablation in log.probes"]
    assert config_warnings(validate({"log": {"direction_k": 2, "probes": ["direction_ablation"]}})) == []


def test_the_instruments_read_nothing_back_to_the_host(monkeypatch):
    """Their values stay on the device until the flush's one transfer: no .item(), bool(), float(),
    int(), .tolist() or .numpy() of a tensor while they measure (a library's own checks aside)."""
    kinds = ["intrinsic_dim", "outliers", "layer_change", "direction_ablation"]
    model, probes = setup(kinds=kinds, norm="pre")
    x = torch.randint(40, (4, 10))
    x[1] = x[0]  # duplicate tokens, for TwoNN's merging

    def read(*args, **kwargs):
        raise AssertionError("a host read")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, read)
    readings = [probes.evaluate(PROBE_KINDS[kind], (x, x), step=0) for kind in kinds]
    monkeypatch.undo()
    assert all(torch.isfinite(r.values()).all() for r in readings)
