"""Scales, cells and the context a suite's analysis reads its runs through.

A cell is a family's base config (`train`: the training budget of the scale; `init`: one step, to
measure gradients at initialisation) plus a few overrides and a seed. Its folder name is computed
from its config (`post-L6-adam-lr0.01-w0-s0`), so suites that need the same run share one folder.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lnexp.config import Config, ConfigError, ModelConfig, apply_sets, set_key, validate, with_plugins
from lnexp.layouts import DEFAULT_NORM, LAYOUTS, NORMS, POST, PRE
from lnexp.recipes import DEFAULT_RECIPE, RECIPES
from lnexp.runs import Run, RunError, load_run
from lnexp.sweep import Cell, value_text


@dataclass(frozen=True)
class Scale:
    """Everything a suite needs to size its cells: `tiny` (minutes on a CPU), `cpu` (an hour on 2 CPU
    cores), `small` (one GPU)."""

    name: str
    description: str
    train: dict[str, Any]            # base config of training cells
    init: dict[str, Any]             # base config of the one-step initialisation cells
    seeds: int                       # seeds of training cells
    init_seeds: int                  # seeds of initialisation cells
    warmup: int                      # warm-up steps where a layout uses warm-up
    lrs: tuple[float, ...]           # xiong2020-warmup and radam
    init_depths: tuple[int, ...]     # Theorem 1's depths
    figure3_depth: int               # depth of Figure 3's per-layer profile
    depths: tuple[int, ...]          # the depth suite
    depth_lr: float
    map_depths: tuple[int, ...]      # stability map
    map_lrs: tuple[float, ...]
    gpt2_depth: int
    gpt2_lr: float
    margin: float                    # "converges": final val loss below the unigram baseline − margin
    paper_gap: str = ""              # how far this is from the papers' settings
    layout_depth: int = 6            # the layouts suite: its one (moderate) depth
    layout_seeds: int = 2            # the layouts suite: seeds of its training cells
    layouts: tuple[str, ...] = ()    # the layouts suite's layouts (`--layouts`); empty: every registered one


def _base(model: dict, data: dict, train: dict, log: dict, optim: dict | None = None,
          schedule: dict | None = None) -> dict[str, Any]:
    optim = optim or {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.98]}
    return {"model": model, "data": data, "optim": optim,
            "schedule": schedule or {"warmup_steps": 0, "decay": "linear"}, "train": train, "log": log}


TINY = Scale(
    name="tiny",
    description="d_model 32, 4 heads, d_ff 128, byte-level Python stdlib (300 kB), 150 steps of "
                "16 × 32 tokens, linear decay; initialisation cells d_model 64, one batch of 64 × 64",
    train=_base({"n_layers": 6, "d_model": 32, "n_heads": 4, "d_ff": 128, "max_seq_len": 32},
                {"source": "stdlib", "max_bytes": 300_000},
                {"steps": 150, "batch_size": 16, "seq_len": 32, "eval_every": 50, "eval_batches": 4,
                 "device": "auto"},
                {"grad_every": 50, "loss_every": 10}),
    init=_base({"n_layers": 6, "d_model": 64, "n_heads": 4, "d_ff": 256, "max_seq_len": 64},
               {"source": "stdlib", "max_bytes": 300_000},
               {"steps": 1, "batch_size": 64, "seq_len": 64, "eval_every": 1, "eval_batches": 1,
                "device": "auto"},
               {"grad_every": 1, "loss_every": 1}),
    seeds=2, init_seeds=3, warmup=50, lrs=(3e-3, 1e-2), init_depths=(6, 12, 24), figure3_depth=6,
    depths=(3, 6, 12, 24), depth_lr=3e-3, map_depths=(3, 6, 12), map_lrs=(1e-3, 3e-3, 1e-2, 3e-2),
    gpt2_depth=12, gpt2_lr=3e-3, margin=0.25, layout_depth=6, layout_seeds=1,
    paper_gap="the tiny scale is ~10⁴ times smaller than the papers' models (d_model 32 against 512, "
              "150 steps against tens of thousands, a 300 kB byte-level corpus, a decoder-only LM "
              "where Xiong et al. and Wang et al. train encoder-decoders on translation)",
)

CPU = Scale(
    name="cpu",
    description="d_model 128, 4 heads, d_ff 512, byte-level Python stdlib (1 MB), 400 steps of "
                "32 × 64 tokens, linear decay; initialisation cells one batch of 64 × 64. The largest "
                "setting whose `all` fits in about an hour on 2 CPU cores",
    train=_base({"n_layers": 6, "d_model": 128, "n_heads": 4, "d_ff": 512, "max_seq_len": 64},
                {"source": "stdlib", "max_bytes": 1_000_000},
                {"steps": 400, "batch_size": 32, "seq_len": 64, "eval_every": 100, "eval_batches": 4,
                 "device": "auto"},
                {"grad_every": 100, "loss_every": 20}),
    init=_base({"n_layers": 6, "d_model": 128, "n_heads": 4, "d_ff": 512, "max_seq_len": 64},
               {"source": "stdlib", "max_bytes": 1_000_000},
               {"steps": 1, "batch_size": 64, "seq_len": 64, "eval_every": 1, "eval_batches": 1,
                "device": "auto"},
               {"grad_every": 1, "loss_every": 1}),
    seeds=2, init_seeds=3, warmup=100, lrs=(1e-3, 3e-3), init_depths=(6, 12, 24), figure3_depth=6,
    depths=(6, 24), depth_lr=1e-3, map_depths=(3, 6), map_lrs=(1e-3, 3e-3),
    gpt2_depth=12, gpt2_lr=1e-3, margin=0.25, layout_depth=6, layout_seeds=1,
    paper_gap="the cpu scale is still ~10³ times smaller than the papers' models (d_model 128 against "
              "512, 400 steps against tens of thousands, a 1 MB byte-level corpus, a decoder-only LM "
              "where Xiong et al. and Wang et al. train encoder-decoders on translation)",
)

SMALL = Scale(
    name="small",
    description="d_model 256, 4 heads, d_ff 1024, byte-level Python stdlib (4 MB), 1000 steps of "
                "32 × 128 tokens, linear decay; initialisation cells one batch of 64 × 128. Sized for "
                "one GPU (used when present)",
    train=_base({"n_layers": 6, "d_model": 256, "n_heads": 4, "d_ff": 1024, "max_seq_len": 128},
                {"source": "stdlib", "max_bytes": 4_000_000},
                {"steps": 1000, "batch_size": 32, "seq_len": 128, "eval_every": 100, "eval_batches": 10,
                 "device": "auto"},
                {"grad_every": 100, "loss_every": 20}),
    init=_base({"n_layers": 6, "d_model": 256, "n_heads": 4, "d_ff": 1024, "max_seq_len": 128},
               {"source": "stdlib", "max_bytes": 4_000_000},
               {"steps": 1, "batch_size": 64, "seq_len": 128, "eval_every": 1, "eval_batches": 1,
                "device": "auto"},
               {"grad_every": 1, "loss_every": 1}),
    seeds=2, init_seeds=3, warmup=200, lrs=(5e-4, 1e-3), init_depths=(6, 12, 24, 48), figure3_depth=6,
    depths=(6, 12, 24, 36), depth_lr=1e-3, map_depths=(6, 12, 24), map_lrs=(3e-4, 1e-3, 3e-3, 1e-2),
    gpt2_depth=24, gpt2_lr=1e-3, margin=0.25, layout_depth=12, layout_seeds=2,
    paper_gap="the small scale is still far smaller than the papers' models (d_model 256 against 512, "
              "1000 steps, a 4 MB byte-level corpus, a decoder-only LM where Xiong et al. and Wang et "
              "al. train encoder-decoders on translation)",
)

SCALES = {"tiny": TINY, "cpu": CPU, "small": SMALL}


def customised(scale: Scale, plugins: Sequence[str] = (), layouts: Sequence[str] = ()) -> Scale:
    """The scale with `--plugin` files in every cell's config (so worker processes load them too) and
    the layouts suite's `--layouts`; ConfigError names a bad one."""
    resolved = with_plugins({}, "--plugin", extra=list(plugins)).get("plugins", [])
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise ConfigError(f"--layouts: unknown layout {unknown[0]!r}; registered: {', '.join(LAYOUTS)}")
    return replace(scale, layouts=tuple(layouts), train={**scale.train, "plugins": resolved},
                   init={**scale.init, "plugins": resolved})


# GPT-2's layout and recipe: Pre-LN, its init (tied, learned positions) and its 1/√N residual scaling.
PRE_GPT2 = {"model.norm": PRE.name, "model.init": "gpt2", "model.residual_scaling": "gpt2"}


def stability_recipes(scale: Scale) -> dict[str, dict[str, Any]]:
    """The five training recipes of the stability map (a layout, with or without warm-up, RAdam,
    GPT-2's scaling), as overrides of the training base."""
    post, pre = {"model.norm": POST.name}, {"model.norm": PRE.name}
    return {
        POST.name: post,
        f"{POST.name}+warm-up": {**post, "schedule.warmup_steps": scale.warmup},
        f"{POST.name}+RAdam": {**post, "optim.name": "radam"},
        PRE.name: pre,
        f"{PRE.name}+gpt2": PRE_GPT2,
    }


@dataclass(frozen=True)
class Spec:
    """A cell as a suite asks for it: family, overrides (dotted keys), seed."""

    family: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int

    @classmethod
    def of(cls, family: str, seed: int, *parts: dict[str, Any]) -> Spec:
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return cls(family, tuple(sorted(merged.items())), seed)


FIXED = ("run.", "train.seed")  # what a suite sets per cell: --set cannot change it


def cell_config(scale: Scale, spec: Spec, sets: Sequence[str] = ()) -> Config:
    """The cell's config: the scale's base, the spec's overrides and seed, then `--set` items (every
    cell's; a fault in one names the --set)."""
    raw = copy.deepcopy(scale.init if spec.family == "init" else scale.train)
    for key, value in spec.overrides:
        set_key(raw, key, value)
    raw["train"]["seed"] = spec.seed
    config = validate(raw, source=f"reproduce {scale.name} {spec.family}")
    for item in sets:
        key = item.partition("=")[0].strip()
        if key.startswith(FIXED):
            raise ConfigError(f"--set {key}: set by the suites per cell (use --out to move the runs)")
    return validate(apply_sets(raw, list(sets)), source="--set") if sets else config


def cell_name(config: Config) -> str:
    m, o = config.model, config.optim
    parts = ["encdec", m.norm] if m.arch == "encoder_decoder" else [m.norm]
    if m.norm_type != DEFAULT_NORM:  # rmsnorm keeps its short name: existing folders are reused
        parts.append({"rmsnorm": "rms"}.get(m.norm_type, m.norm_type))
    for option in LAYOUTS[m.norm].options + NORMS[m.norm_type].options:  # a layout's or norm's own keys
        value = getattr(m, option)
        if value != ModelConfig.model_fields[option].default:
            parts.append(f"{option}-{value_text(value)}")
    if m.init != DEFAULT_RECIPE:
        parts.append(f"init-{m.init}")
    recipe = RECIPES[m.init].defaults  # name only what differs from the recipe's own choices
    if m.tie_embeddings != recipe["tie_embeddings"]:
        parts.append("tied" if m.tie_embeddings else "untied")
    if m.positional != recipe["positional"]:
        parts.append(f"pos-{m.positional}")
    if m.residual_scaling != "none":
        parts.append(f"scaled-{m.residual_scaling}")
    parts += [f"L{m.n_layers}", o.name, f"lr{o.lr:g}", f"w{config.schedule.warmup_steps}",
              f"s{config.train.seed}"]
    return "-".join(parts)


def make_cells(scale: Scale, specs: Sequence[Spec], root: Path, threads: int | None,
               sets: Sequence[str] = ()) -> dict[Spec, Cell]:
    """A Cell per spec, in <root>/runs/<family>/<name>/; specs with the same config share one Cell."""
    cells: dict[Spec, Cell] = {}
    by_name: dict[tuple[str, str], Cell] = {}
    for spec in specs:
        if spec in cells:
            continue
        config = cell_config(scale, spec, sets)
        name = cell_name(config)
        config.run.name, config.run.dir = name, str(root / "runs" / spec.family)
        if threads is not None:
            config.train.threads = threads
        earlier = by_name.get((spec.family, name))
        if earlier is not None:
            if earlier.config.to_dict() != config.to_dict():
                raise RuntimeError(f"two different {spec.family} cells are both named {name}")
            cells[spec] = earlier
            continue
        cells[spec] = by_name[spec.family, name] = Cell(
            name, name.rsplit("-s", 1)[0],
            [f"{k}={value_text(v)}" for k, v in spec.overrides] + [f"train.seed={spec.seed}"], config)
    return cells


@dataclass
class SuiteRuns:
    """What an analysis reads: the runs of its cells, the unigram baseline, the scale."""

    scale: Scale
    cells: dict[Spec, Cell]
    sets: Sequence[str] = ()  # --set items every cell got
    _runs: dict[Spec, Run | None] = field(default_factory=dict)
    _baselines: dict[tuple[str, int], float] = field(default_factory=dict)

    def run(self, family: str, seed: int, *parts: dict[str, Any]) -> Run | None:
        """The run of this cell, or None if it has no readable folder."""
        spec = Spec.of(family, seed, *parts)
        if spec not in self._runs:
            cell = self.cells.get(spec)
            try:
                self._runs[spec] = load_run(cell.path) if cell else None
            except RunError:
                self._runs[spec] = None
        return self._runs[spec]

    def seeds(self, family: str = "train") -> list[int]:
        return list(range(self.scale.seeds if family == "train" else self.scale.init_seeds))

    def baseline(self, seed: int | None = None, family: str = "train") -> float:
        """The unigram baseline of this seed's validation windows (the mean over seeds if None)."""
        if seed is None:
            seeds = self.seeds(family)
            return sum(self.baseline(s, family) for s in seeds) / len(seeds)
        if (family, seed) not in self._baselines:
            config = cell_config(self.scale, Spec(family, (), seed), self.sets)
            self._baselines[family, seed] = unigram_baseline(config)
        return self._baselines[family, seed]

    def threshold(self, seed: int | None = None, family: str = "train") -> float:
        """Final validation loss below which a run of this seed converges."""
        return self.baseline(seed, family) - self.scale.margin

    def converged(self, run: Run | None, family: str = "train") -> bool | None:
        if run is None:
            return None
        return converged(run, self.threshold(int(run.config.get("train", {}).get("seed", 0)), family))


def unigram_baseline(config: Config) -> float:
    """Cross-entropy, in nats, of the validation windows a run with this config evaluates on (the
    trainer draws them with a generator seeded train.seed + 1) under the training bytes' unigram
    frequencies (add-½ smoothing): the loss of a model that ignores context. ln(vocab) for
    synthetic tasks, whose tokens are uniform."""
    import torch

    from lnexp.data import load_data

    data = load_data(config.data)
    if not hasattr(data, "train"):
        return math.log(data.vocab_size)
    t = config.train
    counts = torch.bincount(data.train.long(), minlength=data.vocab_size).double() + 0.5
    log_p = (counts / counts.sum()).log()
    generator = torch.Generator().manual_seed(t.seed + 1)
    targets = torch.cat([data.batch("val", t.batch_size, t.seq_len, generator)[1].flatten()
                         for _ in range(t.eval_batches)])
    return float(-log_p[targets.long()].mean())


def final_loss(run: Run | None) -> float | None:
    """Final validation loss of a completed run, +∞ for a diverged one, None for no result."""
    if run is None:
        return None
    if run.status == "diverged":
        return math.inf
    if run.status != "completed":
        return None
    value = run.summary.get("final_val_loss")
    return float(value) if value is not None else None


def converged(run: Run | None, threshold: float) -> bool | None:
    """Completed, not diverged, and final validation loss below the threshold; None: no result."""
    loss = final_loss(run)
    return None if loss is None else loss < threshold


def loss_curve(run: Run | None, key: str = "loss") -> list[tuple[int, float]]:
    if run is None:
        return []
    return [(m["step"], float(m[key])) for m in run.metrics if m.get(key) is not None]
