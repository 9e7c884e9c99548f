import math

import pytest
import torch

from lnexp.core.config import validate
from lnexp.run.train import build_optimizer, build_scheduler, lr_factor


def config(**schedule):
    return validate({"optim": {"lr": 1e-3}, "train": {"steps": 100}, "schedule": schedule})


def lrs_seen_by_optimizer(cfg, steps: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_warmup_starts_above_zero_and_reaches_the_peak():
    cfg = config(warmup_steps=10)
    seen = lrs_seen_by_optimizer(cfg, 20)
    assert seen[0] == pytest.approx(1e-4)  # lr/w at step 0: the first update is not a no-op
    assert seen[9] == pytest.approx(1e-3) and seen[15] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(seen[:9], seen[1:10]))


def test_optimizer_follows_the_closed_form_exactly():
    for decay in ("constant", "inverse_sqrt", "cosine", "linear"):
        cfg = config(warmup_steps=5, decay=decay, min_lr=1e-5)
        seen = lrs_seen_by_optimizer(cfg, 100)
        assert seen == pytest.approx([1e-3 * lr_factor(cfg, s) for s in range(100)])


def test_no_warmup_means_full_lr_at_step_0():
    assert lrs_seen_by_optimizer(config(), 1)[0] == pytest.approx(1e-3)


def test_inverse_sqrt_after_warmup():
    cfg = config(warmup_steps=4, decay="inverse_sqrt")
    assert lr_factor(cfg, 3) == 1.0 and lr_factor(cfg, 15) == pytest.approx(math.sqrt(4 / 16))


def test_cosine_and_linear_end_at_min_lr():
    for decay in ("cosine", "linear"):
        cfg = config(warmup_steps=10, decay=decay, min_lr=1e-4)
        assert lr_factor(cfg, 10) == pytest.approx(1.0)
        assert 1e-3 * lr_factor(cfg, 100) == pytest.approx(1e-4)
        assert 1e-3 * lr_factor(cfg, 55) == pytest.approx(1e-4 + 0.5 * 9e-4)


@pytest.mark.parametrize("optim", [{"name": "adam", "weight_decay": 0.01},
                                   {"name": "adamw", "weight_decay": 0.1},
                                   {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                                   {"name": "radam"}])
def test_the_optimiser_steps_as_torchs_per_tensor_loop_bit_for_bit(optim):
    """build_optimizer takes the foreach path on a CPU where it is bit-identical to the loop (runs keep
    their numbers), and leaves RAdam on torch's default."""
    from lnexp.core.model import TransformerLM

    cfg = validate({"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 8},
                    "optim": {"lr": 3e-3, **optim}, "train": {"seq_len": 8}})
    models, paths = [], []
    for foreach in (None, False):
        torch.manual_seed(0)
        model = TransformerLM(cfg.model, 32)
        opt = build_optimizer(model, cfg)
        paths.append(opt.param_groups[0]["foreach"])
        if foreach is False:
            for group in opt.param_groups:
                group["foreach"] = False
        generator = torch.Generator().manual_seed(0)
        for _ in range(10):
            tokens = torch.randint(32, (4, 9), generator=generator)
            model(tokens[:, :-1], tokens[:, 1:])[1].backward()
            opt.step()
            opt.zero_grad()
        models.append(model)
    assert paths[0] is (None if optim["name"] == "radam" else True)  # the path the runs take
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), name
