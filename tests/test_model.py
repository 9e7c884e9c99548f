import math

import pytest
import torch

from lnexp.core.config import ModelConfig
from lnexp.core.model import TransformerLM, build_model


def make(**kw) -> TransformerLM:
    torch.manual_seed(0)
    base = dict(n_layers=4, d_model=32, n_heads=4, d_ff=64, max_seq_len=16)
    return TransformerLM(ModelConfig(**{**base, **kw}), vocab_size=50)


def block_shapes(model: TransformerLM) -> dict:
    return {n: p.shape for n, p in model.named_parameters() if n.startswith("blocks.")}


def test_post_and_pre_have_identical_block_parameters():
    post, pre = make(norm="post"), make(norm="pre")
    assert block_shapes(post) == block_shapes(pre)
    assert post.final_norm is None and pre.final_norm is not None
    assert {"attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.out.weight", "ffn.fc1.weight",
            "ffn.fc2.weight", "attn_norm.weight", "ffn_norm.weight"} <= \
        {n.split(".", 2)[2] for n in block_shapes(post)}


def block_output(norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    model = make(norm=norm)
    x = torch.randn(3, 8, 32) * 5 + 2  # far from normalised on purpose
    return x, model.blocks[0](x)


def test_post_ln_block_output_is_normalised():
    _, y = block_output("post")
    assert torch.allclose(y.mean(-1), torch.zeros(3, 8), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, 8), atol=1e-3)


def test_pre_ln_block_output_is_not_normalised_and_keeps_the_skip():
    x, y = block_output("pre")
    assert y.var(-1, unbiased=False).mean() > 5  # the residual stream's scale passes through
    # x + F(LN(x)): the branch only sees the normalised input, so scaling x shifts y by the same.
    model = make(norm="pre")
    block = model.blocks[0]
    assert torch.allclose(block(x + 1.0) - block(x), torch.ones_like(x), atol=1e-4)


def test_pre_ln_final_norm_normalises_what_the_head_sees():
    model = make(norm="pre")
    seen = {}
    model.final_norm.register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    model(torch.randint(50, (2, 8)))
    assert torch.allclose(seen["x"].var(-1, unbiased=False), torch.ones(2, 8), atol=1e-3)


def std_of(model: TransformerLM, suffix: str) -> float:
    return torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith(suffix)]).std().item()


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_gpt2_init_std_and_residual_scaling(norm):
    n_layers = 12
    model = make(norm=norm, init="gpt2", residual_scaling="gpt2", n_layers=n_layers, d_model=64, d_ff=256)
    scaled = 0.02 / math.sqrt(2 * n_layers)
    assert std_of(model, "ffn.fc2.weight") == pytest.approx(scaled, rel=0.03)
    assert std_of(model, "attn.out.weight") == pytest.approx(scaled, rel=0.03)
    assert std_of(model, "ffn.fc1.weight") == pytest.approx(0.02, rel=0.03)
    assert std_of(model, "attn.q.weight") == pytest.approx(0.02, rel=0.03)


def test_xavier_init_and_its_residual_scaling():
    plain = make(d_model=64, d_ff=256, n_layers=8)
    scaled = make(d_model=64, d_ff=256, n_layers=8, residual_scaling="gpt2")
    xavier_fc2 = math.sqrt(2 / (64 + 256))  # uniform(-a, a), a = sqrt(6/(in+out)): std sqrt(2/(in+out))
    assert std_of(plain, "ffn.fc2.weight") == pytest.approx(xavier_fc2, rel=0.03)
    assert std_of(scaled, "ffn.fc2.weight") == pytest.approx(xavier_fc2 / 4, rel=0.03)  # 1/sqrt(16)
    assert std_of(scaled, "ffn.fc1.weight") == pytest.approx(xavier_fc2, rel=0.03)
    assert all(b.abs().max() == 0 for n, b in plain.named_parameters() if n.endswith("fc1.bias"))


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_causal_future_tokens_do_not_change_the_past(norm, positional):
    model = make(norm=norm, positional=positional).eval()
    idx = torch.randint(50, (1, 10))
    changed = idx.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 50
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5) and not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_head_shares_the_embedding_and_untied_has_its_own():
    assert "head.weight" not in dict(make(tie_embeddings=True).named_parameters())
    assert dict(make(tie_embeddings=False).named_parameters())["head.weight"].shape == (50, 32)


def test_initial_loss_is_near_uniform():
    model = make(norm="pre")
    _, loss = model(torch.randint(50, (4, 16)), torch.randint(50, (4, 16)))
    assert abs(loss.item() - math.log(50)) < 1.0


# --- the residual stream's tap (what the probes and packed training read) --------------------------

def model_and_batch(arch: str, norm: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64, max_seq_len=16, norm=norm, arch=arch)
    tokens = torch.randint(1, 50, (3, 4, 10), generator=torch.Generator().manual_seed(1))
    return build_model(cfg, 50), tuple(tokens) if arch == "encoder_decoder" else tuple(tokens[:2])


def hooked_stream(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[tuple, list]:
    """The forward's output, and the stream entering each block of the logits' stack and leaving the
    last as module hooks see it."""
    blocks, seen = model.residual_blocks(), []
    hooks = [block.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for block in blocks]
    hooks.append(blocks[-1].register_forward_hook(lambda m, args, out: seen.append(out)))
    output = model(*inputs)
    for hook in hooks:
        hook.remove()
    return output, seen


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_hiddens_are_the_stream_entering_each_block_and_leaving_the_last(arch, norm):
    model, batch = model_and_batch(arch, norm)
    (logits, loss), hiddens = model.with_hiddens(*batch)
    (hooked_logits, hooked_loss), expected = hooked_stream(model, batch)
    assert len(hiddens) == len(expected) == 4
    assert all(torch.equal(h, e) for h, e in zip(hiddens, expected))
    assert torch.equal(logits, hooked_logits) and torch.equal(loss, hooked_loss)


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_what_the_tap_returns_flows_on_and_an_added_zero_gets_dloss_dx(arch):
    model, batch = model_and_batch(arch, "pre")
    (logits, loss), stream = hooked_stream(model, batch)
    for x in stream:
        x.retain_grad()
    loss.backward()
    # a zero added at each boundary changes nothing, and its gradient is the stream's
    deltas = [torch.zeros(*batch[-1].shape, 32, requires_grad=True) for _ in stream]
    _, tapped = model(*batch, tap=lambda i, x: x + deltas[i])
    assert torch.equal(tapped, loss)
    tapped.backward()
    assert all(torch.equal(d.grad, x.grad) for d, x in zip(deltas, stream))
    # what the tap returns is what the block gets
    doubled = model(*batch, tap=lambda i, x: 2 * x if i == 1 else x)[0]
    model.residual_blocks()[1].register_forward_pre_hook(lambda m, args: (2 * args[0], *args[1:]))
    assert torch.equal(doubled, model(*batch)[0]) and not torch.equal(doubled, logits)
