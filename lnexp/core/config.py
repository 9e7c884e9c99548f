"""The config schema, YAML loading, `--set` overrides and one-line validation errors.

YAML's own typing is never trusted: PyYAML reads `1e-3` as a string and `on` as true, so every value
is coerced and checked against the schema below (pydantic), and a bool is never accepted as a number.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from lnexp.core import plugins
from lnexp.core.data_sources import DATA_SOURCES, DEFAULT_SOURCE, LM_TASKS, SEQ2SEQ_TASKS, read_keys
from lnexp.core.errors import LnexpError
from lnexp.core.files import CONFIG_LIMIT, FileProblem, read_regular
from lnexp.core.layouts import DEFAULT_LAYOUT, DEFAULT_NORM, LAYOUTS, NORMS
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.core.recipes import DEFAULT_RECIPE, LEGACY_NAMES, RECIPES


class ConfigError(LnexpError):
    """Bad user input: printed as one line, exit code 2, nothing written."""


def _no_bool(value: Any) -> Any:
    # pydantic's lax mode turns true into 1.0; a YAML `on` must never become a learning rate.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Beta = Annotated[float, BeforeValidator(_no_bool), Field(ge=0.0, lt=1.0)]


def _registered(registry: dict[str, Any]) -> Callable[[Any], str]:
    """A name checked against a registry when the config is validated, not when this module is
    imported, so a plugin's layouts, norms and probes count."""
    def check(name: Any) -> str:
        if not isinstance(name, str) or name not in registry:
            hint = " (YAML reads on/off/yes/no as booleans: quote it)" if isinstance(name, bool) else ""
            raise ValueError(f"must be one of {', '.join(map(repr, registry))}, got {_show(name)}{hint}")
        return name
    return check


LayoutName = Annotated[str, BeforeValidator(_registered(LAYOUTS))]
NormName = Annotated[str, BeforeValidator(_registered(NORMS))]
ProbeName = Annotated[str, BeforeValidator(_registered(PROBE_KINDS))]
SourceName = Annotated[str, BeforeValidator(_registered(DATA_SOURCES))]
# An init recipe's name; a name from an earlier lnexp (`xavier`) still means what it meant then.
InitName = Annotated[str, BeforeValidator(_registered(RECIPES)),
                     BeforeValidator(lambda v: LEGACY_NAMES.get(v, v) if isinstance(v, str) else v)]


def _switch(value: Any) -> Any:
    """A section that may be given as `true` (its defaults) or `false` (off)."""
    return ({} if value else None) if isinstance(value, bool) else value


INIT_ONLY = {"init_only": True}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class ModelConfig(Section):
    n_layers: Int = Field(6, ge=1, le=1000)
    d_model: Int = Field(128, ge=1, le=65536)
    n_heads: Int = Field(4, ge=1, le=65536)
    d_ff: Int = Field(512, ge=1, le=1_048_576)
    activation: Literal["relu", "gelu"] = "relu"
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    norm: LayoutName = DEFAULT_LAYOUT  # lnexp/core/layouts.py
    # INIT_ONLY: keys read only when the weights are initialised (packed training, lnexp.run.pack, lets
    # cells that differ in them train together)
    residual_scaling: Literal["none", "gpt2"] = Field("none", json_schema_extra=INIT_ONLY)
    norm_eps: Float = Field(1e-5, gt=0.0, lt=1.0)
    positional: Literal["learned", "sinusoidal"] = "sinusoidal"  # unset: the init recipe's choice
    tie_embeddings: bool = False  # unset: the init recipe's choice (fairseq: untied; gpt2: tied)
    bias: bool = True
    max_seq_len: Int = Field(256, ge=1, le=1_000_000)
    init: InitName = Field(DEFAULT_RECIPE, json_schema_extra=INIT_ONLY)  # but see InitRecipe's flags
    norm_type: NormName = DEFAULT_NORM  # lnexp/core/layouts.py NORMS
    admin_init: Literal["closed_form", "profile"] = Field("closed_form", json_schema_extra=INIT_ONLY)
    mix_ratio: Float = Field(0.25, ge=0.0, le=1.0)  # Mix-LN's α: the Post-LN share (paper default)
    # DyT's initial α (the paper's default outside LLMs)
    dyt_alpha: Float = Field(0.5, gt=0.0, json_schema_extra=INIT_ONLY)
    arch: Literal["decoder", "encoder_decoder"] = "decoder"
    # a norm (norm_type) on each head's queries and keys before their dot product (Dehghani et al. 2023)
    qk_norm: bool = False

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """The keys the init recipe decides (tying, positions) take its values unless set."""
        if isinstance(data, dict):
            name = data.get("init", DEFAULT_RECIPE)
            recipe = RECIPES.get(LEGACY_NAMES.get(name, name)) if isinstance(name, str) else None
            if recipe is not None:
                return {**data, **{k: v for k, v in recipe.defaults.items() if k not in data}}
        return data


class DataConfig(Section):
    source: SourceName = DEFAULT_SOURCE  # lnexp/core/data_sources.py
    path: str | None = None
    val_path: str | None = None  # tokens: the validation ids (else the last val_fraction of path's)
    token_dtype: Literal["uint16", "uint32"] = "uint16"  # tokens: the ids' type in a .bin (.npy says)
    tokenizer: Literal["byte", "bpe", "word"] = "byte"
    # hf: datasets.load_dataset(dataset, config, split=...); a local folder of data files works too
    dataset: str | None = None
    config: str | None = None
    split: str = "train"
    val_split: str | None = None  # else the last val_fraction of `split`
    text_field: str = "text"
    source_field: str | None = None  # with model.arch encoder_decoder; `column.key` reaches into a mapping
    target_field: str | None = None
    max_bytes: Int = Field(4_000_000, ge=1024, le=2**40)
    val_fraction: Float = Field(0.1, gt=0.0, lt=1.0)
    task: Literal[tuple(dict.fromkeys(LM_TASKS + SEQ2SEQ_TASKS))] = "copy"  # the source says which
    vocab_size: Int = Field(256, ge=2, le=1_000_000)
    seed: Int = Field(0, ge=0, lt=2**63)  # seq2seq translate: the seed of its two made-up languages


class OptimConfig(Section):
    name: Literal["adam", "adamw", "radam", "sgd"] = "adam"
    lr: Float = Field(1e-3, gt=0.0, le=100.0)
    betas: tuple[Beta, Beta] = (0.9, 0.98)
    eps: Float = Field(1e-8, gt=0.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    clip_grad_norm: Float | None = Field(None, gt=0.0)


class ScheduleConfig(Section):
    warmup_steps: Int = Field(0, ge=0)
    decay: Literal["constant", "inverse_sqrt", "cosine", "linear"] = "constant"
    min_lr: Float = Field(0.0, ge=0.0)


class TrainConfig(Section):
    steps: Int = Field(1000, ge=1, le=1_000_000_000)
    batch_size: Int = Field(32, ge=1, le=1_048_576)
    seq_len: Int = Field(128, ge=1, le=1_000_000)
    seed: Int = Field(0, ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Int | None = Field(None, ge=1, le=1024)
    eval_every: Int = Field(100, ge=1)
    eval_batches: Int = Field(10, ge=1, le=100_000)
    eval_bleu_every: Int | None = Field(None, ge=1)  # encoder-decoder: BLEU/chrF into metrics.jsonl
    diverge_loss: Float | None = Field(None, gt=0.0)
    checkpoint_every: Int | None = Field(None, ge=1)
    deterministic: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    peak_tflops: Float | None = Field(None, gt=0.0)


class WandbConfig(Section):
    """wandb.init's settings. A key left unset is W&B's own: its environment (WANDB_PROJECT,
    WANDB_ENTITY, WANDB_MODE, WANDB_RUN_GROUP) or default; a key set here wins."""

    project: str | None = Field(None, min_length=1)
    entity: str | None = Field(None, min_length=1)
    group: str | None = Field(None, min_length=1)  # unset: a sweep's cells are grouped by the sweep's name
    tags: list[str] = []
    notes: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None  # offline: `wandb sync` later


Steps = list[Annotated[int, BeforeValidator(_no_bool), Field(ge=0)]]  # an evaluation probe's schedule


class LogConfig(Section):
    grad_every: Int = Field(10, ge=1)
    probes: list[ProbeName] = ["grad", "act"]  # lnexp/core/probe_kinds.py
    output_change_steps: Steps = [0]
    # sensitivity's noise ablation: one forward per layer, so only at these steps
    ablation_steps: Steps = [0]
    intrinsic_dim_steps: Steps = [0]
    outlier_steps: Steps = [0]
    layer_change_steps: Steps = [0]  # one forward per layer (each block skipped in turn)
    direction_ablation_steps: Steps = [0]  # two forwards per layer
    # direction_ablation's k: the top-k dimensions by RMS, and the top-k principal directions
    direction_k: Int = Field(4, ge=1)
    loss_every: Int = Field(10, ge=1)
    tensorboard: bool = False  # event files in RUN/tb/, written at each flush (the tensorboard extra)
    # TensorBoard's histograms of the weights' gradients every this many steps (None: none; they cost)
    histograms_every: Int | None = Field(None, ge=1)
    # a Weights & Biases run of the same scalars (the wandb extra); `true`: W&B's own settings
    wandb: Annotated[WandbConfig | None, BeforeValidator(_switch)] = None
    # the plain progress line where stderr is not a terminal (batch jobs, nohup, CI): every this many
    # steps (rounded up to loss_every), or None: about every 10 seconds
    print_every: Int | None = Field(None, ge=1)


class RunConfig(Section):
    name: str | None = None
    dir: str = "runs"


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    log: LogConfig = LogConfig()
    run: RunConfig = RunConfig()
    plugins: list[str] = []  # Python files whose layouts, norms and probes register (lnexp/core/plugins.py)

    def diverge_threshold(self, vocab_size: int) -> float:
        """Loss above which a run counts as exploded: twice a uniform guess unless configured."""
        return self.train.diverge_loss or 2.0 * math.log(vocab_size)

    # what set each key, for error messages after validation (a data file that is not there): a
    # config file's path or `--set ITEM`; load_config fills it
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def blame(self, fault: str, default: str) -> str:
        """A fault found after validation (`key: why`, e.g. from loading the data), prefixed by what
        set it: the `--set` of a key it names, else the file that set its key, else `default`."""
        key, _, why = fault.partition(": ")
        named = [key, *_mentioned(why)]
        for origin in (_origin(self._origins, k, below=False) for k in named):
            if origin and origin.startswith(SET):
                return _set_blame(origin[len(SET):], key, why)
        return f"{_origin(self._origins, key) or default}: {fault}"


SET = "--set "
EXTENDS_DEPTH = 8  # base files extending base files: deeper than this is a mistake


def load_config(path: str | Path, overrides: list[str] = (), plugins: list[str] = ()) -> Config:
    """Read a YAML config (and the base files it `extends`), load its plugins and `plugins`
    (`--plugin`), apply `key.path=value` overrides, validate; raise ConfigError on any fault.

    A fault is blamed on the `--set` that brought it in (the first override after which the config
    fails this way), else on the file that set its key (a base file, or the config itself)."""
    path = Path(path)
    composed, origins = _read_composed(path)
    raw = with_plugins(composed, str(path), path.parent, list(plugins))
    items = [(item, *_parse_override(item)) for item in overrides]
    configs = [copy.deepcopy(raw)]
    for _, key, value in items:
        configs.append(copy.deepcopy(configs[-1]))
        set_key(configs[-1], key, value)
    fault = _fault(configs[-1])
    if fault is None:
        config = Config.model_validate(configs[-1])
        for item, key, value in items:
            _record(origins, key, value, SET + item)
        config._origins = origins
        return config
    culprit = len(items)
    while culprit > 0 and _fault(configs[culprit - 1]) == fault:
        culprit -= 1
    key, message = fault
    if culprit == 0:
        named = (_origin(origins, k) for k in (key, *_mentioned(message)))
        raise ConfigError(f"{next((o for o in named if o), path)}: {key}: {message}")
    raise ConfigError(_set_blame(items[culprit - 1][0], key, message))


def _set_blame(item: str, key: str, message: str) -> str:
    """`--set KEY: why` for a fault of the key the `--set` item sets (or of a key inside it), else
    `--set ITEM: key: why`."""
    blamed = item.partition("=")[0].strip()
    named = blamed if key == blamed or key.startswith(blamed + ".") else f"{item}: {key}"
    return f"{SET}{named}: {message}"


def _mentioned(message: str) -> list[str]:
    """The config keys a message names (`outside data.vocab_size (256)` -> data.vocab_size)."""
    sections = "|".join(Config.model_fields)
    return re.findall(rf"\b(?:{sections})(?:\.[A-Za-z_]\w*)+", message)


def _origin(origins: dict[str, str], key: str, below: bool = True) -> str | None:
    """What set `key`: itself, else the section it lies in (set as a whole), else (`below`) the last
    key set inside it."""
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:depth]))
        if found:
            return found
    inside = [origin for k, origin in origins.items() if k.startswith(key + ".")] if below else []
    return inside[-1] if inside else None


def _forget(origins: dict[str, str], key: str) -> None:
    """Drop what set `key` and the keys inside it (a value that replaces them)."""
    for old in [k for k in origins if k == key or k.startswith(key + ".")]:
        del origins[old]


def _record(origins: dict[str, str], key: str, value: Any, source: str) -> None:
    """Note `source` as what set `key` to `value` (each key inside a mapping value); what set the
    keys it replaces is forgotten."""
    _forget(origins, key)
    if isinstance(value, dict) and value:
        for child, inner in value.items():
            _record(origins, f"{key}.{child}", inner, source)
    else:
        origins[key] = source


def _read_composed(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """A config file merged over the base files it `extends` (one path or a list, relative to its
    folder; merged in order, each may extend others): mappings merge key by key, any other value
    replaces the base's. Returns the merged YAML and the file that set each key."""
    raw = _read_yaml(path)
    bases = raw.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: extends: must be a config file or a list of them")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: extends: a cycle ({' -> '.join(map(str, (*chain, path.resolve())))})")
    if len(chain) >= EXTENDS_DEPTH:
        raise ConfigError(f"{path}: extends: more than {EXTENDS_DEPTH} files deep")
    listed = raw.get("plugins")
    if isinstance(listed, list) and all(isinstance(p, str) and p for p in listed):
        raw["plugins"] = [str(path.parent / Path(p).expanduser()) for p in listed]  # from its own folder
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for base in bases:
        _merge(merged, origins, *_read_composed(path.parent / Path(base).expanduser(),
                                                (*chain, path.resolve())))
    _merge(merged, origins, raw, None, str(path))
    return merged, origins


def _merge(into: dict[str, Any], origins: dict[str, str], raw: dict[str, Any],
           raw_origins: dict[str, str] | None, source: str = "", prefix: str = "") -> None:
    """Merge `raw` into `into` (mappings key by key) and what set its keys into `origins`:
    `raw_origins`' entries, or `source` for each of them."""
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):  # `{}` leaves the base's keys
            _merge(into[key], origins, value, raw_origins, source, dotted + ".")
            continue
        into[key] = copy.deepcopy(value)
        if raw_origins is None:
            _record(origins, dotted, value, source)
        else:
            _forget(origins, dotted)
            origins.update({k: o for k, o in raw_origins.items()
                            if k == dotted or k.startswith(dotted + ".")})


def apply_sets(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """A copy of parsed YAML with `--set KEY=VALUE` items applied (not yet validated)."""
    raw = copy.deepcopy(raw)
    for item in sets:
        set_key(raw, *_parse_override(item))
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """A Config from parsed YAML (a file, a checkpoint's config); ConfigError names `source`."""
    raw = with_plugins(raw, source)
    fault = _fault(raw)
    if fault:
        raise ConfigError(f"{source}: {fault[0]}: {fault[1]}")
    return Config.model_validate(raw)


def with_plugins(raw: dict[str, Any], source: str, folder: Path | None = None, extra: list[str] = ()
                  ) -> dict[str, Any]:
    """Load the config's plugins (relative paths: from `folder`, the config file's) and `extra` (from
    `--plugin`), so their layouts, norms and probes validate; the config keeps absolute paths."""
    listed = raw.get("plugins", [])
    if not isinstance(listed, list) or not all(isinstance(p, str) and p for p in listed):
        raise ConfigError(f"{source}: plugins: must be a list of Python file paths")
    paths = [Path(p).expanduser() for p in listed]
    paths = [p if p.is_absolute() or folder is None else folder / p for p in paths]
    resolved = list(dict.fromkeys(str(p.resolve()) for p in [*paths, *map(Path, extra)]))
    for path in resolved:
        try:
            plugins.load(path)
        except plugins.PluginError as exc:
            blame = "--plugin" if path not in map(str, (p.resolve() for p in paths)) else \
                f"{source}: plugins"
            raise ConfigError(f"{blame}: {exc}") from None
    return {**raw, "plugins": resolved} if resolved else raw


def _fault(raw: dict[str, Any]) -> tuple[str, str] | None:
    """The first problem of a config, as (key, message), or None."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:  # a misspelt key first: it explains a required one being missing
        error = next((e for e in exc.errors() if e["type"] == "extra_forbidden"), exc.errors()[0])
        return ".".join(str(part) for part in error["loc"]), _describe(error)
    return _check_consistency(config)


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names a key twice."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML keeps the last,
    so a repeated section would silently replace the first. Merge keys (<<) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base class says so
                continue
            if first is not None:
                raise DuplicateKey(None, None, f"duplicate key {key!r} (first at line {first + 1})",
                                   key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = read_regular(path, CONFIG_LIMIT).decode("utf-8")
    except FileProblem as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: bad YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: bad YAML: nested too deeply") from None
    if raw is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {_kind(raw)}")
    return raw


def _parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> (key path, value read as YAML, to be validated like the file's)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. optim.lr=3e-3")
    if not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"--set {key}: empty key part (expected SECTION.KEY, e.g. optim.lr)")
    try:
        value = yaml.load(text, Loader=_StrictLoader) if text.strip() else ""
    except DuplicateKey as exc:
        raise ConfigError(f"--set {key}: {exc.problem}") from None
    except (yaml.YAMLError, RecursionError):  # not YAML: the text itself (validated as a string)
        value = text
    return key, value


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (`optim.lr`) in parsed YAML, making its sections; ConfigError if a part of
    the path is not a section."""
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents[: depth + 1])} is not a section")
        node = child
    node[leaf] = value


def _check_consistency(config: Config) -> tuple[str, str] | None:
    """Constraints between keys: caught before anything is built or written."""
    m, t, d = config.model, config.train, config.data
    if m.d_model % m.n_heads:
        return "model.n_heads", f"must divide model.d_model ({m.d_model}), got {m.n_heads}"
    if t.seq_len > m.max_seq_len:
        return "train.seq_len", f"must be <= model.max_seq_len ({m.max_seq_len}), got {t.seq_len}"
    source = DATA_SOURCES[d.source]
    for key, why in source.required.items():
        if key not in d.model_fields_set or getattr(d, key) in (None, ""):
            return f"data.{key}", f"required when data.source is {d.source}" + (f" ({why})" if why else "")
    if source.pairs == "with_encoder_decoder" and source.seq2seq(m.arch):
        for key in ("source_field", "target_field"):
            if not getattr(d, key):
                return f"data.{key}", f"required when data.source is {d.source} with model.arch {m.arch}"
    if d.tokenizer != "byte" and not source.text:
        texts = ", ".join(name for name, s in DATA_SOURCES.items() if s.text)
        return "data.tokenizer", f"applies to text ({texts}), not data.source {d.source}"
    if d.tokenizer == "bpe" and d.vocab_size < MIN_BPE_VOCAB:
        return "data.vocab_size", (f"must be >= {MIN_BPE_VOCAB} with data.tokenizer bpe (256 bytes and "
                                   f"the specials before any merge), got {d.vocab_size}")
    if t.eval_bleu_every is not None and m.arch != "encoder_decoder":
        return "train.eval_bleu_every", "needs model.arch encoder_decoder (BLEU scores translations)"
    if m.arch not in source.arches() and m.arch == "encoder_decoder":
        serving = [name for name, s in DATA_SOURCES.items() if m.arch in s.arches()]
        return "data.source", (f"must be {', '.join(serving[:-1])} or {serving[-1]} with model.arch "
                               f"{m.arch}, got {d.source}")
    if m.arch not in source.arches():
        return "data.source", f"{d.source} needs model.arch {source.arches()[0]}, got model.arch {m.arch}"
    if source.tasks and d.task not in source.tasks:
        return "data.task", (f"must be one of {', '.join(source.tasks)} with data.source {d.source}, "
                             f"got {d.task}")
    if d.source == "seq2seq" and d.task == "translate" and d.vocab_size < 16:
        return "data.vocab_size", f"must be >= 16 for the translate task, got {d.vocab_size}"
    if m.arch == "encoder_decoder" and t.seq_len < 2:
        return "train.seq_len", f"must be >= 2 with model.arch encoder_decoder, got {t.seq_len}"
    if m.positional == "sinusoidal" and m.d_model % 2:
        return "model.d_model", f"must be even for sinusoidal positions, got {m.d_model}"
    layout = LAYOUTS[m.norm]
    if m.residual_scaling == "gpt2" and layout.own_init:  # GPT-2's branch scaling would confound it
        why = layout.own_init if isinstance(layout.own_init, str) else "it sets its own init"
        return "model.residual_scaling", f"must be none with model.norm {m.norm} ({why})"
    for kind, registry, chosen in (("norm", LAYOUTS, m.norm), ("norm_type", NORMS, m.norm_type)):
        for option in dict.fromkeys(o for item in registry.values() for o in item.options):
            if option not in registry[chosen].options \
                    and getattr(m, option) != ModelConfig.model_fields[option].default:
                owners = " or ".join(name for name, item in registry.items() if option in item.options)
                return f"model.{option}", f"applies only to model.{kind} {owners}, got model.{kind} {chosen}"
    if config.log.direction_k >= m.d_model:
        return "log.direction_k", (f"must be < model.d_model ({m.d_model}): ablating every direction "
                                   f"leaves nothing to compare, got {config.log.direction_k}")
    name = config.run.name
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name
                             or name.startswith("~") or "\0" in name):
        return "run.name", f"must be a plain folder name, got {_show(name)}"
    if name is not None and len(name.encode()) > MAX_RUN_NAME:
        return "run.name", f"must be at most {MAX_RUN_NAME} bytes (a folder name), got {len(name.encode())}"
    return None


MIN_BPE_VOCAB = 260  # byte-level BPE starts from the 256 bytes and 4 specials (pad, bos, eos, unk)
MAX_RUN_NAME = 200  # NAME_MAX is 255 bytes; the rest is room for the temp names beside a folder


def config_warnings(config: Config) -> list[str]:
    """Keys the user set that do nothing in this config (`key: why`): accepted, but worth a word."""
    d, s = config.data, config.schedule
    warnings = []
    read, source = read_keys(d, config.model.arch), DATA_SOURCES[d.source]
    for key in (k for k in DataConfig.model_fields if k in d.model_fields_set and k not in read):
        task = key in source.keys and source.tasks  # a key this source reads with another task
        warnings.append(f"data.{key}: has no effect with data.source {d.source}"
                        + (f" and data.task {d.task}" if task else ""))
    for kind in PROBE_KINDS.values():
        for key in (kind.schedule, *kind.options):
            if key in config.log.model_fields_set and kind.name not in config.log.probes:
                warnings.append(f"log.{key}: has no effect without {kind.name} in log.probes")
    if config.log.histograms_every and not config.log.tensorboard:
        warnings.append("log.histograms_every: has no effect without log.tensorboard")
    if "momentum" in config.optim.model_fields_set and config.optim.name != "sgd":
        warnings.append(f"optim.momentum: has no effect with optim.name {config.optim.name}")
    if s.warmup_steps > config.train.steps:
        warnings.append(f"schedule.warmup_steps: {s.warmup_steps} is more than train.steps "
                        f"({config.train.steps}): the learning rate never reaches optim.lr")
    return warnings


def _describe(error: dict[str, Any]) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    got = f"got {_show(value)}"
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(error["loc"])
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        hint = " (YAML reads on/off/yes/no as booleans: quote it)" if isinstance(value, bool) else ""
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}, {got}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, {got}"
    if kind.startswith("int_"):
        return f"must be an integer, {got}"
    if kind.startswith("float_") or kind == "finite_number":
        return f"must be a finite number, {got}"
    if kind.startswith("bool_"):
        return f"must be true or false, {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys, {got}"
    if kind in ("list_type", "tuple_type", "too_short", "too_long"):
        return f"must be a list of the right length, {got}"
    if kind == "string_type":
        return f"must be a string, {got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, {got}"


def _suggest(loc: tuple[Any, ...]) -> str:
    *parents, name = loc
    section: type[BaseModel] = Config
    for part in parents:
        annotation = section.model_fields[part].annotation  # a section, or an optional one (log.wandb)
        sections = [a for a in (annotation, *get_args(annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return ""
        section = sections[0]
    close = difflib.get_close_matches(str(name), list(section.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

