"""Scales, cells and the context a suite's analysis reads its runs through.

A cell is a family's base config (`train`: the training budget of the scale; `init`: one step, to
measure gradients at initialisation) plus a few overrides and a seed. Its folder name is computed
from its config (`post-L6-adam-lr0.01-w0-s0`), so suites that need the same run share one folder.

What a cell logs is not part of what it is: a spec's `log.*` overrides are requests, and the suites
that share a training get one run with the union of their requests (`merged_log`). A finished folder
whose log covers the request is reused as it is (`adopt_covering_log`), so re-running trains nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from lnexp.core.config import (
    Config,
    ConfigError,
    LogConfig,
    ModelConfig,
    apply_sets,
    set_key,
    validate,
    with_plugins,
)
from lnexp.core.layouts import DEFAULT_NORM, LAYOUTS, NORMS
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.core.recipes import DEFAULT_RECIPE, RECIPES
from lnexp.experiments.reproduce.measure import converged, profile
from lnexp.experiments.sweep.grid import Cell, value_text
from lnexp.experiments.sweep.state import is_finished
from lnexp.run.reader import Run, RunError, load_run


@dataclass(frozen=True)
class Scale:
    """What every suite sizes its cells from: `tiny` (minutes on a CPU), `cpu` (an hour on 2 CPU cores),
    `small` (one GPU). A suite's own grid parameters (its depths, learning rates) live with the suite,
    one set per scale name; `suite_params` replaces them (a custom scale's, `--layouts`)."""

    name: str
    description: str
    train: dict[str, Any]            # base config of training cells
    init: dict[str, Any]             # base config of the one-step initialisation cells
    seeds: int                       # seeds of training cells (>= 3: a claim's interval needs them)
    init_seeds: int                  # seeds of initialisation cells (>= 5)
    warmup: int                      # warm-up steps, wherever a suite's cell uses warm-up
    margin: float                    # "converges": final val loss below the unigram baseline − margin
    paper_gap: str = ""              # how far this is from the papers' settings
    suite_params: Mapping[str, Any] = field(default_factory=dict)  # suite name -> its parameters


def _scale(name: str, d_model: int, seq_len: int, corpus_bytes: int, steps: int, batch_size: int,
           eval_every: int, eval_batches: int, grad_every: int, loss_every: int, warmup: int, paper_gap: str,
           init_d_model: int | None = None, init_seq_len: int | None = None, note: str = "") -> Scale:
    """A scale of 6-layer, 4-head models with d_ff = 4·d_model on the stdlib corpus: training cells
    Adam, no warm-up (unless a suite's cell asks for it), linear decay; initialisation cells one step on
    one batch of 64 windows (of their own model, d_model 64 at `tiny`). The description says the same,
    from the same numbers; `note` ends it."""
    init_d_model, init_seq_len = init_d_model or d_model, init_seq_len or seq_len
    data = {"source": "stdlib", "max_bytes": corpus_bytes}
    size = f"{corpus_bytes // 10**6} MB" if corpus_bytes >= 10**6 else f"{corpus_bytes // 1000} kB"

    def base(d: int, seq: int, train: dict[str, Any], log: dict[str, Any]) -> dict[str, Any]:
        return {"model": {"n_layers": 6, "d_model": d, "n_heads": 4, "d_ff": 4 * d, "max_seq_len": seq},
                "data": data, "optim": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.98]},
                "schedule": {"warmup_steps": 0, "decay": "linear"},
                "train": {**train, "seq_len": seq, "device": "auto"}, "log": log}

    return Scale(
        name,
        f"d_model {d_model}, 4 heads, d_ff {4 * d_model}, byte-level Python stdlib ({size}), {steps} steps "
        f"of {batch_size} × {seq_len} tokens, linear decay; initialisation cells "
        + (f"d_model {init_d_model}, " if init_d_model != d_model else "")
        + f"one batch of 64 × {init_seq_len}{note}",
        train=base(d_model, seq_len, {"steps": steps, "batch_size": batch_size, "eval_every": eval_every,
                                      "eval_batches": eval_batches},
                   {"grad_every": grad_every, "loss_every": loss_every}),
        init=base(init_d_model, init_seq_len,
                  {"steps": 1, "batch_size": 64, "eval_every": 1, "eval_batches": 1},
                  {"grad_every": 1, "loss_every": 1}),
        seeds=3, init_seeds=5, warmup=warmup, margin=0.25, paper_gap=paper_gap)


TINY = _scale("tiny", 32, 32, 300_000, steps=150, batch_size=16, eval_every=50, eval_batches=4, grad_every=50,
              loss_every=10, warmup=50, init_d_model=64, init_seq_len=64, paper_gap=(
                  "the tiny scale is ~10⁴ times smaller than the papers' models (d_model 32 against 512, 150 "
                  "steps against tens of thousands, a 300 kB byte-level corpus, a decoder-only LM where "
                  "Xiong et al. and Wang et al. train encoder-decoders on translation)"))
CPU = _scale("cpu", 128, 64, 1_000_000, steps=400, batch_size=32, eval_every=100, eval_batches=4,
             grad_every=100, loss_every=20, warmup=100, note=". The largest setting whose `all` fits in "
             "about an hour on 2 CPU cores", paper_gap=(
                 "the cpu scale is still ~10³ times smaller than the papers' models (d_model 128 against "
                 "512, 400 steps against tens of thousands, a 1 MB byte-level corpus, a decoder-only LM "
                 "where Xiong et al. and Wang et al. train encoder-decoders on translation)"))
SMALL = _scale("small", 256, 128, 4_000_000, steps=1000, batch_size=32, eval_every=100, eval_batches=10,
               grad_every=100, loss_every=20, warmup=200, note=". Sized for one GPU (used when present)",
               paper_gap=("the small scale is still far smaller than the papers' models (d_model 256 against "
                          "512, 1000 steps, a 4 MB byte-level corpus, a decoder-only LM where Xiong et al. "
                          "and Wang et al. train encoder-decoders on translation)"))

SCALES = {"tiny": TINY, "cpu": CPU, "small": SMALL}


def with_plugins_in_cells(scale: Scale, plugins: Sequence[str] = ()) -> Scale:
    """The scale with `--plugin` files in every cell's config (so worker processes load them too);
    ConfigError names a bad one."""
    resolved = with_plugins({}, "--plugin", extra=list(plugins)).get("plugins", [])
    return replace(scale, train={**scale.train, "plugins": resolved},
                   init={**scale.init, "plugins": resolved})


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


# A suite's grid: each cell key (a small tuple: (layout, depth), (setting, lr), ...) -> that cell's
# spec, one per seed. The suite declares it once; its analysis reads the runs through the same keys.
Grid = dict[Hashable, tuple[Spec, ...]]


def per_seed(family: str, seeds: int, *parts: dict[str, Any], first: int = 0) -> tuple[Spec, ...]:
    """One grid cell: the same overrides with seeds first .. first + seeds − 1."""
    return tuple(Spec.of(family, seed, *parts) for seed in range(first, first + seeds))


def disjoint(specs: tuple[Spec, ...]) -> tuple[Spec, ...]:
    """The same cell on as many other seeds, after the given ones: a placebo's second arm A′ (the same
    setting as A; only the seeds differ)."""
    shift = max(s.seed for s in specs) + 1 - min(s.seed for s in specs)
    return tuple(replace(s, seed=s.seed + shift) for s in specs)


def log_final(scale: Scale) -> dict[str, Any]:
    """The log request of a training cell whose probes a suite reads on the final model
    (lnexp.experiments.reproduce.measure.profile's "final"): step 0 and the last step."""
    return {"log.grad_every": max(1, scale.train["train"]["steps"] - 1)}


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


def cell_name(config: Config, base_width: int | None = None) -> str:
    """The folder name: what the cell sets, in words (a width only where it is not the family's,
    `base_width`: the names of the other cells stay as they were)."""
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
    if base_width is not None and m.d_model != base_width:
        parts.append(f"d{m.d_model}")
    parts += [f"L{m.n_layers}", o.name, f"lr{o.lr:g}", f"w{config.schedule.warmup_steps}",
              f"s{config.train.seed}"]
    return "-".join(parts)


def make_cells(scale: Scale, specs: Sequence[Spec], root: Path, threads: int | None,
               sets: Sequence[str] = ()) -> dict[Spec, Cell]:
    """A Cell per spec, in <root>/runs/<family>/<name>/; specs whose configs differ at most in what
    they log share one Cell, which logs the union of their requests (`merged_log`)."""
    configs = {spec: cell_config(scale, spec, sets) for spec in dict.fromkeys(specs)}
    groups: dict[tuple[str, str], list[Spec]] = {}
    for spec, config in configs.items():
        base = scale.init if spec.family == "init" else scale.train
        groups.setdefault((spec.family, cell_name(config, base["model"]["d_model"])), []).append(spec)
    cells: dict[Spec, Cell] = {}
    for (family, name), members in groups.items():
        config = configs[members[0]]
        unlogged = {k: v for k, v in config.to_dict().items() if k != "log"}
        if any({k: v for k, v in configs[s].to_dict().items() if k != "log"} != unlogged for s in members):
            raise RuntimeError(f"two different {family} cells are both named {name}")
        config = config.model_copy(deep=True)
        config.log = LogConfig.model_validate(merged_log([configs[s].log for s in members],
                                                         [requested(s, sets) for s in members], name))
        config.run.name, config.run.dir = name, str(root / "runs" / family)
        if threads is not None:
            config.train.threads = threads
        spec = members[0]
        cell = Cell(name, name.rsplit("-s", 1)[0],
                    [f"{k}={value_text(v)}" for k, v in spec.overrides] + [f"train.seed={spec.seed}"], config)
        cells.update(dict.fromkeys(members, cell))
    return cells


def requested(spec: Spec, sets: Sequence[str] = ()) -> set[str]:
    """The `log` keys a spec asks for (its `log.*` overrides, and `--set log.*` items): the others
    are the scale's defaults, which another spec of the same cell may change."""
    return {k.partition(".")[2] for k, _ in spec.overrides if k.startswith("log.")} | \
        {item.partition("=")[0].strip().partition(".")[2] for item in sets if item.strip().startswith("log.")}


def merged_log(logs: Sequence[LogConfig], requests: Sequence[set[str]], name: str) -> dict[str, Any]:
    """One `log` section serving every spec of a shared cell: the union of the probes and of every
    list of steps (each spec's, asked or its default: a spec reads what it logs by default too); the
    largest interval whose logged steps include every requested interval's (their gcd; a spec that
    does not ask for one takes any); every other key as all specs have it (RuntimeError if not)."""
    dumped = [log.model_dump(mode="json") for log in logs]
    merged = dict(dumped[0])
    for key, value in merged.items():
        every = [d[key] for d in dumped]
        if key == "probes":
            wanted = {p for d in dumped for p in d[key]}
            merged[key] = [p for p in PROBE_KINDS if p in wanted]
        elif isinstance(value, list):
            merged[key] = sorted({x for v in every for x in v})
        elif key == "grad_every":
            asked = [d[key] for d, keys in zip(dumped, requests) if key in keys]
            merged[key] = math.gcd(*asked) if asked else value
        elif any(v != value for v in every):
            raise RuntimeError(f"the specs of cell {name} ask for different log.{key}: {every}")
    return merged


def adopt_covering_log(cell: Cell, asked: set[str]) -> None:
    """A finished folder that logged at least what the cell logs (every probe, every step of its
    lists; at every step of its `grad_every` if one of its specs asked for it, `asked`; every other key
    the same) is the cell's run as it is: its stored `log` becomes the cell's, so that planning reuses
    it instead of training it again. Reads config.yaml as data."""
    if not is_finished(cell.path):
        return
    try:
        stored = yaml.safe_load((cell.path / "config.yaml").read_text())
        have = LogConfig.model_validate(stored["log"])
    except Exception:  # unreadable, or another version's keys: planning decides as for any folder
        return
    want, steps = cell.config.log, cell.config.train.steps
    lists = [k for k, v in want.model_dump().items() if isinstance(v, list) and k != "probes"]
    others = [k for k in LogConfig.model_fields if k not in (*lists, "probes", "grad_every")]
    if (set(want.probes) <= set(have.probes)
            and all(set(getattr(want, k)) <= set(getattr(have, k)) for k in lists)
            and ("grad_every" not in asked
                 or all(s % have.grad_every == 0 for s in range(0, steps, want.grad_every)))
            and all(getattr(want, k) == getattr(have, k) for k in others)):
        cell.config = cell.config.model_copy(update={"log": have})


def cost(config: Config) -> float:
    """A run's work, for starting the longest first: steps × tokens × layers × d_model × (d_model +
    seq_len) (the matmuls and attention of a step), both stacks of an encoder-decoder."""
    m, t = config.model, config.train
    stacks = 2 if m.arch == "encoder_decoder" else 1
    return t.steps * t.batch_size * t.seq_len * stacks * m.n_layers * m.d_model * (m.d_model + t.seq_len)


@dataclass
class SuiteRuns:
    """What an analysis reads: the runs of its grid's cells (`runs[key]`, one per seed), the suite's
    parameters, the unigram baseline, the scale."""

    suite: str
    scale: Scale
    params: Any                    # the suite's own parameters at this scale
    grid: Grid
    cells: dict[Spec, Cell]
    sets: Sequence[str] = ()  # --set items every cell got
    _runs: dict[Spec, Run | None] = field(default_factory=dict)
    _baselines: dict[tuple[str, int], float] = field(default_factory=dict)

    def __getitem__(self, key: Hashable) -> list[Run | None]:
        """The runs of the grid's cell `key`, one per seed (None: no readable folder). A key the grid
        does not declare is a KeyError, not a missing run: a typo must not turn a verdict inconclusive."""
        if key not in self.grid:
            raise KeyError(f"suite {self.suite}: its grid declares no cell {key!r}")
        return [self._run(spec) for spec in self.grid[key]]

    def _run(self, spec: Spec) -> Run | None:
        if spec not in self._runs:
            cell = self.cells.get(spec)
            try:
                self._runs[spec] = load_run(cell.path) if cell else None
            except RunError:
                self._runs[spec] = None
        return self._runs[spec]

    def seeds(self, family: str = "train") -> list[int]:
        return list(range(self.scale.seeds if family == "train" else self.scale.init_seeds))

    def seeds_of(self, key: Hashable) -> list[int]:
        """The seeds of the grid's cell `key`, in the order `self[key]` gives its runs."""
        return [spec.seed for spec in self.grid[key]]

    def profiles(self, key: Hashable, probe: str, param: str,
                 at: Literal["init", "final"] = "init") -> list[list[float] | None]:
        """The complete profiles of the cell's runs, one per seed (lnexp.experiments.reproduce.measure.
        profile; None where a run lacks it)."""
        return [profile(run, probe, param, at) for run in self[key]]

    def baseline(self, seed: int | None = None, family: str = "train") -> float:
        """The unigram baseline of this seed's validation windows (the mean over seeds if None)."""
        if seed is None:
            seeds = self.seeds(family)
            return sum(self.baseline(s, family) for s in seeds) / len(seeds)
        if (family, seed) not in self._baselines:
            config = cell_config(self.scale, Spec(family, (), seed), self.sets)
            self._baselines[family, seed] = unigram_val_loss(config)
        return self._baselines[family, seed]

    def threshold(self, seed: int | None = None, family: str = "train") -> float:
        """Final validation loss below which a run of this seed converges."""
        return self.baseline(seed, family) - self.scale.margin

    def converged(self, run: Run | None, family: str = "train") -> bool | None:
        if run is None:
            return None
        return converged(run, self.threshold(int(run.config.get("train", {}).get("seed", 0)), family))


def unigram_val_loss(config: Config) -> float:
    """The validation loss of a context-blind model: the cross-entropy, in nats, of the validation
    windows a run with this config evaluates on (the trainer draws them with a generator seeded
    train.seed + 1) under the training bytes' unigram frequencies (add-½ smoothing). Not the corpus's
    `unigram_entropy` (lnexp.data.sources, summary.json): that is the entropy of the training frequencies
    themselves, one number per corpus; this one depends on the seed's windows, so that a run is compared
    with the baseline of the very windows it was scored on. ln(vocab) for synthetic tasks, whose tokens
    are uniform."""
    import torch

    from lnexp.data.sources import load_data

    data = load_data(config.data, config.model.arch)
    if not hasattr(data, "train"):
        return math.log(data.vocab_size)
    t = config.train
    counts = torch.bincount(data.train.long(), minlength=data.vocab_size).double() + 0.5
    log_p = (counts / counts.sum()).log()
    generator = torch.Generator().manual_seed(t.seed + 1)
    targets = torch.cat([data.batch("val", t.batch_size, t.seq_len, generator)[1].flatten()
                         for _ in range(t.eval_batches)])
    return float(-log_p[targets.long()].mean())
