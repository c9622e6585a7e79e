"""Study configs: the YAML schema, validated with pydantic (unknown keys and wrong types are errors with their path).

Training options left out fall back to the defaults of `armodels.train.TrainConfig`, so each default lives in
one place. See configs/text-default.yaml for a commented example.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

import armodels
from armodels.bpe import MAX_VOCAB_SIZE
from armodels.char_word import MIN_VOCAB_SIZE, vocab_size_problem
from armodels.config_fields import OMITTED_AT_DEFAULT
from armodels.train import TrainConfig, flops_conventions
from pipelines.errors import ManyProblems, UserError
from scaling.flops import CONVENTIONS

# The presets: configs/, which pipelines/presets links to so that the wheel ships them as package data.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "text-default"


def added_setting(default: Any, **constraints: Any) -> Any:
    """A setting added after studies were made: `stable_dump` leaves it out while it holds its default, so a step
    that records the whole config (the report) keeps its hash (see armodels.config_fields for dataclasses)."""
    return Field(default, json_schema_extra={OMITTED_AT_DEFAULT: True}, **constraints)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def stable_dump(self) -> dict[str, Any]:
        """This section as JSON data, less the added settings that hold their defaults (added_setting)."""
        data = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            added = isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get(OMITTED_AT_DEFAULT)
            if not (added and value == info.default):
                data[name] = _stable(value)
        return data


def _stable(value: Any) -> Any:
    if isinstance(value, _Strict):
        return value.stable_dump()
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    return TypeAdapter(type(value)).dump_python(value, mode="json") if value is not None else None


class CorpusConfig(_Strict):
    source: Literal["python-stdlib", "files"] = "python-stdlib"
    paths: list[str] = []  # for source "files": files, directories (searched recursively) or glob patterns
    extensions: list[str] = [".py"]  # which files in directories count as documents
    max_bytes: int = Field(16_000_000, gt=0)  # files are taken in a seeded shuffle until this many bytes
    val_fraction: float = Field(0.05, gt=0, lt=1)  # share of files held out, chosen by a hash of their path
    # Larger files are generated data, not prose or code (the stdlib's pydoc_data/topics.py is 750 kB of docs).
    max_file_bytes: int = Field(500_000, gt=0)

    @model_validator(mode="after")
    def _paths_for_files(self):
        if self.source == "files" and not self.paths:
            raise ValueError("source 'files' needs at least one entry in paths")
        return self


class ImagesConfig(_Strict):
    """An image study's data: a spec for `armodels.images.load_images` ("default": Fashion-MNIST where the Debian
    package is installed, else scikit-learn's digits; or a path). Its test split is the study's held-out split."""

    data: str = "default"
    train_images: int = Field(10_000, gt=0)  # the first this many of the training split
    test_images: int = Field(2_000, gt=0)
    binarize: bool = False  # pixels become 0 or 255 (threshold 128): the pixel stream then has 2 levels, not 256
    # the pyramid stream's: each image at 1/pyramid_factor of its resolution (block means), then in full
    pyramid_factor: int = added_setting(2, ge=2)


class ImageTokenizerConfig(_Strict):
    """A discrete autoencoder (VQ-VAE, FSQ or LFQ) or a colour palette whose codes are one of an image study's token
    streams. A palette is fitted by k-means (its model's `iterations`), so steps, batch_size and lr do not apply."""

    steps: int = Field(1000, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    # fields of armodels.vqvae.VQVAEConfig, armodels.fsq.FSQConfig, armodels.lfq.LFQConfig or
    # armodels.palette.PaletteConfig
    model: dict[str, Any] = {}


TEXT_STREAM, IMAGE_STREAMS = "text", ("pixels", "pyramid", "vqvae", "fsq", "lfq", "palette")
CODE_STREAMS = IMAGE_STREAMS[2:]  # an image tokenizer's codes: each needs its entry in image_tokenizers
# A text study's further streams, beside "text" (the study's `tokenizer`): one per kind in `text_tokenizers`, so
# one study can compare byte-level BPE, characters and words in bits/byte.
TOKENIZER_KIND_NAMES = {"bpe": "byte-level BPE", "char": "character-level", "word": "word-level"}
TEXT_TOKENIZER_KINDS = tuple(TOKENIZER_KIND_NAMES)
TEXT_STREAMS = (TEXT_STREAM, *TEXT_TOKENIZER_KINDS)


class TokenizerConfig(_Strict):
    # at most what the BPE trainer can allocate for; the least depends on the kind (_vocab_size_fits_the_kind): bpe
    # 258 (256 bytes + end-of-document + a merge), char and word 3 (end-of-document, unknown and one unit)
    vocab_size: int = Field(1024, le=MAX_VOCAB_SIZE, json_schema_extra={"minimum": MIN_VOCAB_SIZE})
    train_bytes: int = Field(8_000_000, gt=0)  # the tokenizer is trained on a sample of the training split this large
    # byte-level BPE, or the most frequent characters or word pieces (\w+|\s+|[^\w\s]) with an unknown token
    kind: Literal["bpe", "char", "word"] = added_setting("bpe")

    @model_validator(mode="after")
    def _vocab_size_fits_the_kind(self):
        if problem := vocab_size_problem(self.kind, self.vocab_size):
            raise ValueError(f"vocab_size: with tokenizer.kind {self.kind}, {problem}")
        return self


class ShardConfig(_Strict):
    shard_tokens: int = Field(1_000_000, gt=0)


# Keys of a size entry that belong to the study, not to the family's config.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # names that become folder names cannot leave the study folder


def _tokens_per_param(value: Any) -> Any:
    """One problem for a bad tokens_per_param, not one per member of its type's union."""
    ratios = value if isinstance(value, list) else [value]
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < float("inf")
                             for r in ratios):
        raise ValueError(f"one positive number of tokens per parameter, or a non-empty list of them (got {value!r})")
    return value


def _token_counts(value: Any) -> Any:
    """One problem for a bad training.tokens, not one per member of its type's union."""
    counts = value if isinstance(value, list) else [value]
    if not counts or not all(isinstance(n, (int, float)) and not isinstance(n, bool) and 0 < n < float("inf")
                             and float(n).is_integer() for n in counts):
        raise ValueError(f"one positive whole number of tokens, or a non-empty list of them (got {value!r})")
    return value


# Tokens per parameter: one ratio for every size, or several (sizes × token budgets: each size trained at each)
TokensPerParam = Annotated[Union[float, list[float]], BeforeValidator(_tokens_per_param)]
# Tokens: one budget for every size, or several (sizes × token budgets: every size trained on each many tokens)
TokenCounts = Annotated[Union[int, list[int]], BeforeValidator(_token_counts)]
GRID_TRAINING_KEYS = ("tokens_per_param", "schedule", "decay_fraction", "decay_shape")  # a grid may override these
SIZE_OPTIONS = ("name", "tokens", "lr", "num_workers", "device", "gpus_per_worker", "seeds", "lr_sweep", "batch_size",
                "beta2", "warmup_tokens")
DEVICES = ("auto", "cpu", "cuda")  # training.device; auto: GPUs when the cluster has them (armodels.device)


def check_gpus_per_worker(value: Any) -> str | None:
    """Why `value` cannot be a worker's GPUs, or None when it can. Ray gives a worker a fraction of one GPU (so
    several small runs share it) or whole GPUs, never a fraction of several."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return f"must be a positive number of GPUs (got {value!r})"
    if value > 1 and value != int(value):
        return (f"{value:g} GPUs cannot be placed: a worker gets a fraction of one GPU (at most 1, e.g. 0.25 packs "
                "four runs on a GPU) or whole GPUs; use more workers for more GPUs")
    return None


def check_lr_sweep(value: Any) -> str | None:
    """Why `value` cannot be a learning-rate sweep, or None when it can."""
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of learning rates (got {value!r})"
    if not all(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 for lr in value):
        return f"learning rates must be positive numbers (got {value!r})"
    if len(set(value)) < len(value):
        return f"has a learning rate twice (got {value!r})"
    return None


# Per-size options checked like training's: (test, what a valid value is)
SIZE_OPTION_CHECKS = {
    "tokens": (lambda v: type(v) is int and v >= 1, "must be a whole number of tokens, 1 or more"),
    "num_workers": (lambda v: type(v) is int and v >= 1, "must be a whole number, 1 or more"),
    "seeds": (lambda v: type(v) is int and v >= 1, "must be a whole number of seeds, 1 or more"),
    "batch_size": (lambda v: type(v) is int and v >= 1, "must be a whole number of sequences, 1 or more"),
    "warmup_tokens": (lambda v: type(v) is int and v >= 0, "must be a whole number of tokens, 0 or more"),
    "lr": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "must be a positive number"),
    "beta2": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
              "must be a number in [0, 1)"),
}


def field_type_problem(value: Any, hint: Any) -> str | None:
    """What `value` must be to fill a family config field of type `hint`, where pydantic's lax mode would convert it
    silently (true as 1, 2.0 as 2), or None when it may."""
    if hint is int and type(value) is not int:
        return "must be a whole number"
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "must be a number"
    if hint is bool and type(value) is not bool:
        return "must be true or false"
    if get_origin(hint) is tuple and get_args(hint)[:1] == (int,) and (
            not isinstance(value, (list, tuple)) or any(type(v) is not int for v in value)):
        return "must be a list of whole numbers"
    return None


def model_fields(size: dict[str, Any]) -> dict[str, Any]:
    """The family's config fields of a size entry: all but the SIZE_OPTIONS."""
    return {k: v for k, v in size.items() if k not in SIZE_OPTIONS}


class GridConfig(_Strict):
    """One family trained at several sizes. A size is the family's config fields (see `armodels.build`), plus
    optional `name` (default: family and parameter count), `tokens` (overrides the budget rule), `num_workers`
    (overrides training.num_workers: big runs get more workers), `device` and `gpus_per_worker` (override
    training's: small runs share a GPU, big ones get whole GPUs), and the per-size hyperparameters `lr`,
    `lr_sweep`, `seeds`, `batch_size`, `beta2`, `warmup_tokens` (override training's)."""

    family: str = "transformer"
    # The token stream the grid models: in text studies "text" (the study's tokenizer) or "bpe", "char" or "word"
    # (that entry of text_tokenizers); in image studies "pixels" (8-bit values in raster order), "vqvae", "fsq" or
    # "lfq" (the code grid of that image tokenizer, in raster order), "palette" (each pixel's palette colour), or
    # "pyramid" (each image at 1/images.pyramid_factor resolution, then in full: hierarchical_pixelcnn's sequence).
    stream: Literal["text", "bpe", "char", "word", "pixels", "pyramid", "vqvae", "fsq", "lfq", "palette"] = TEXT_STREAM
    sizes: list[dict[str, Any]] = Field(min_length=1)
    # What the fits and the report call this grid's runs (and their names begin with), instead of the family: two
    # grids of one family that differ in how they train (e.g. `cosine` and `wsd`) are fitted and compared apart.
    label: str | None = added_setting(None, pattern=SAFE_NAME)
    # Overrides of training's keys for this grid. tokens_per_param: families differ in how many tokens a parameter
    # is worth (a PixelCNN over pixels wants far more than a transformer over codes); schedule and its decay: two
    # grids can compare schedules on the same sizes and budgets.
    tokens_per_param: TokensPerParam | None = added_setting(None)
    schedule: Literal["cosine", "wsd", "constant"] | None = added_setting(None)
    decay_fraction: float | None = added_setting(None, gt=0, lt=1)
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = added_setting(None)
    # Overrides models.condition for this grid: a conditioned grid beside an unconditioned one shows what the class
    # buys (give them distinct labels).
    condition: Literal["none", "class"] | None = added_setting(None)

    @property
    def series(self) -> str:
        """What the fits and the report compare: the label, else the family (in image studies the stream and the
        family)."""
        if self.label:
            return self.label
        return self.family if self.stream == TEXT_STREAM else f"{self.stream}-{self.family}"

    def training_overrides(self) -> dict[str, Any]:
        """The training keys this grid sets. A schedule set here replaces the study's schedule settings too: its
        decay keys apply only where the grid's schedule is wsd."""
        out = {k: getattr(self, k) for k in GRID_TRAINING_KEYS if getattr(self, k) is not None}
        if "schedule" in out and out["schedule"] != "wsd":
            out |= {k: None for k in ("decay_fraction", "decay_shape") if k not in out}
        return out

    @model_validator(mode="after")
    def _sizes_fit_the_family(self):
        if self.family not in armodels.families():
            raise ValueError(f"family: unknown family {self.family!r}{did_you_mean(self.family, armodels.families())}"
                             f"; one of {', '.join(armodels.families())}")
        if armodels.is_image_family(self.family) and self.stream not in IMAGE_STREAMS:
            raise ValueError(f"{self.family} models images (height × width), not token streams; use it in an "
                             "image study's pixels, vqvae, fsq, lfq or palette stream")
        problems = [p for i, size in enumerate(self.sizes) for p in self._size_problems(f"sizes.{i}", size)]
        if problems:
            raise ValueError("\n".join(problems))  # validation_problems gives each line its own path
        return self

    def _size_problems(self, where: str, size: dict[str, Any]) -> list[str]:
        """'sizes.<i>.<key>: what is wrong' for each problem of one size entry."""
        config_class = armodels.family_classes(self.family)[1]
        known = {f.name for f in fields(config_class)}
        hints = get_type_hints(config_class)
        set_by_study = armodels.fields_set_by_study(self.family)
        problems = []
        name = size.get("name")
        if name is not None and not (isinstance(name, str) and re.fullmatch(SAFE_NAME, name)):
            problems.append(f"{where}.name: {name!r} names a folder: use letters, digits, '.', '_', '-' and start "
                            "with a letter or digit")
        for key, (valid, what) in SIZE_OPTION_CHECKS.items():
            if key in size and not valid(size[key]):
                problems.append(f"{where}.{key}: {what} (got {size[key]!r})")
        if "lr_sweep" in size and (problem := check_lr_sweep(size["lr_sweep"])):
            problems.append(f"{where}.lr_sweep: {problem}")
        if size.get("device", "auto") not in DEVICES:
            problems.append(f"{where}.device: one of {', '.join(DEVICES)} (got {size['device']!r})")
        if "gpus_per_worker" in size and (problem := check_gpus_per_worker(size["gpus_per_worker"])):
            problems.append(f"{where}.gpus_per_worker: {problem}")
        model = model_fields(size)
        field_problems = []
        for key in model:
            if key in set_by_study:
                field_problems.append(f"{where}.{key}: set by the study (from the tokenizer and the data)")
            elif key not in known:
                settable = sorted(known - set(set_by_study))
                field_problems.append(f"{where}.{key}: {self.family} has no such field"
                                      f"{did_you_mean(key, [*settable, *SIZE_OPTIONS])}; its fields: "
                                      f"{', '.join(settable)}")
            elif problem := field_type_problem(model[key], hints[key]):
                field_problems.append(f"{where}.{key}: {problem} (got {model[key]!r})")
        if not field_problems:  # the family's own checks (n_embd a multiple of n_head, ...) need valid fields
            try:
                TypeAdapter(config_class).validate_python(model)
            except ValidationError as e:
                field_problems += [f"{where}{'.' if path else ''}{path}: {message}"
                                   for path, message in validation_problems(e)]
        return problems + field_problems


class ModelsConfig(_Strict):
    seq_len: int = Field(128, gt=0)  # tokens per training window, for every family (image studies: one image)
    grids: list[GridConfig] = Field(min_length=1)
    # class: every model is conditioned on the class of its image (labelled image data; the study sets each model's
    # n_classes from the labels), with a learned class embedding or bias (families whose config has n_classes)
    condition: Literal["none", "class"] = added_setting("none")

    def condition_of(self, grid: GridConfig) -> str:
        """The grid's conditioning: its own `condition`, else the models section's."""
        return grid.condition or self.condition

    @property
    def class_conditioned(self) -> bool:
        """Whether any grid is class-conditioned: the study then keeps the images' labels."""
        return any(self.condition_of(grid) == "class" for grid in self.grids)


# Fields of `training` that plan the runs (token budgets, workers, devices); every other one is a TrainConfig field.
PLANNING_FIELDS = ("tokens", "tokens_per_param", "tokens_per_param_of", "min_tokens", "max_tokens", "flops_budgets",
                   "num_workers", "cpus_per_worker", "device", "gpus_per_worker", "seeds", "lr_sweep", "cooldowns")


class TrainingConfig(_Strict):
    # Token budget per size: `tokens` for all, else tokens_per_param × the size's parameters (a compute-optimal
    # design when the ratio is near the optimum: every run then sits on the compute frontier). min_tokens and
    # max_tokens clip it; a cap that gives several sizes the same tokens turns L(C) into a fixed-data curve, so
    # the default is no cap.
    # A list of tokens or of ratios trains every size at each (sizes × token budgets, for Chinchilla's Approach 3):
    # with schedule cosine or constant one run per budget (named -d<tokens> or -tpp<ratio>), with wsd cooldown
    # branches off one trunk per size (-cd<tokens or ratio>).
    tokens: TokenCounts | None = None
    tokens_per_param: TokensPerParam = 20.0
    # which parameters tokens_per_param counts: Kaplan et al.'s non-embedding ones, or all (Hoffmann et al.)
    tokens_per_param_of: Literal["nonembedding", "total"] = added_setting("nonembedding")
    min_tokens: int | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    # Noise and per-size tuning: `seeds` runs of every size (seed, seed + 1, ...); with `lr_sweep`, every size
    # is trained at each of these learning rates and the best (lowest mean loss over seeds) enters the fits.
    seeds: int = added_setting(1, ge=1)
    lr_sweep: list[float] | None = added_setting(None)
    # An isoFLOP grid (Chinchilla's Approach 2): every size trained at each of these budgets (training FLOPs in
    # fit.convention), its tokens set to spend the budget; the fit step then adds isoflop, envelope and chinchilla
    flops_budgets: list[float] | None = Field(None, min_length=1)
    num_workers: int = Field(1, gt=0)  # Ray Train workers per run (DeepSpeed data parallel)
    cpus_per_worker: int = Field(1, gt=0)
    device: Literal["auto", "cpu", "cuda"] = added_setting("auto")  # auto: GPUs when the cluster has them, else CPUs
    gpus_per_worker: float = added_setting(1.0)  # on GPUs: a fraction of one GPU (0.25: four runs share it) or whole
    # Passed to armodels.train.TrainConfig; None means its default.
    batch_size: int | None = Field(None, gt=0)
    micro_batch_size: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    warmup_fraction: float | None = Field(None, ge=0, lt=1)
    warmup_tokens: int | None = added_setting(None, ge=0)  # warmup in tokens, the same for every size (replaces
    # warmup_fraction; capped at half a run). A fraction warms a big run up for longer than a small one.
    # The learning rate after the warmup: cosine decay to lr × min_lr_ratio; wsd (warmup-stable-decay): the peak,
    # then a cooldown over the last decay_fraction of the steps, shaped linear, cosine or 1-sqrt (Hägele et al.
    # 2024: 1-sqrt over 10-20% matches cosine); constant: the peak to the end.
    schedule: Literal["cosine", "wsd", "constant"] = added_setting("cosine")
    decay_fraction: float | None = added_setting(None, gt=0, lt=1)  # wsd only; default 0.2
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = added_setting(None)  # wsd only; default 1-sqrt
    # WSD cooldown branches (schedule: wsd): each size trains one trunk at the peak lr, and a cooldown branches off
    # it for each of these budgets, in tokens per parameter (≤ tokens_per_param, the trunk's planned length): one
    # (N, D) point each, for the compute of one run of the longest.
    cooldowns: list[float] | None = added_setting(None)
    weight_decay: float | None = Field(None, ge=0)
    beta1: float | None = Field(None, ge=0, lt=1)
    beta2: float | None = Field(None, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    zero_stage: Literal[0, 1, 2, 3] | None = None
    precision: Literal["fp32", "bf16"] | None = None  # default: bf16 on GPUs that have it, else fp32
    eval_points: int | None = Field(None, ge=0)
    eval_windows: int | None = Field(None, gt=0)
    log_every: int | None = Field(None, gt=0)
    checkpoints: int | None = Field(None, ge=0)  # mid-run checkpoints per run (default 10)
    compile: bool | None = None  # torch.compile the training loss (for GPUs; no faster on a small CPU run)

    @model_validator(mode="after")
    def _budget_bounds(self):
        problems = []
        if problem := check_gpus_per_worker(self.gpus_per_worker):
            problems.append(f"gpus_per_worker: {problem}")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            problems.append(f"min_tokens {self.min_tokens} exceeds max_tokens {self.max_tokens}")
        if self.lr_sweep is not None and (problem := check_lr_sweep(self.lr_sweep)):
            problems.append(f"lr_sweep: {problem}")
        if self.flops_budgets and (min(self.flops_budgets) <= 0 or self.tokens):
            problems.append("flops_budgets must be positive FLOPs and replace `tokens` (leave `tokens` out)")
        if self.cooldowns is not None:
            problems += [f"cooldowns: {p}" for p in self._cooldown_problems()]
        if len(self.ratios) > 1 and (self.tokens or self.flops_budgets):
            problems.append("tokens_per_param: a list of ratios sets each size's token budgets; leave training.tokens "
                            "and flops_budgets out")
        for name in ("decay_fraction", "decay_shape"):
            if getattr(self, name) is not None and self.schedule != "wsd":
                problems.append(f"{name} shapes the cooldown of schedule: wsd; with schedule: {self.schedule} leave it "
                                "out (or set schedule: wsd)")
        warmup, decay = (TrainConfig.__dataclass_fields__[k].default if getattr(self, k) is None else getattr(self, k)
                         for k in ("warmup_fraction", "decay_fraction"))
        if self.schedule == "wsd" and warmup + decay >= 1:
            problems.append(f"warmup_fraction ({warmup}) and decay_fraction ({decay}) together leave no stable phase: "
                            "make them sum below 1")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _cooldown_problems(self) -> list[str]:
        if not self.cooldowns or min(self.cooldowns) <= 0:
            return ["must be a non-empty list of positive budgets in tokens per parameter"]
        if self.schedule != "wsd":
            return [f"cooldown branches need schedule: wsd (a {self.schedule} run has no cooldown to branch off)"]
        if self.tokens or self.flops_budgets:
            return ["budgets are in tokens per parameter; leave training.tokens and flops_budgets out"]
        if len(self.ratios) > 1:
            return ["give the budgets once: cooldowns with one tokens_per_param (the trunk's length), or a list of "
                    "tokens_per_param with schedule: wsd (planned as cooldowns off a trunk of the longest)"]
        if max(self.cooldowns) > self.trunk_ratio:
            return [f"{max(self.cooldowns):g} tokens per parameter is longer than the trunk (tokens_per_param: "
                    f"{self.trunk_ratio:g}); raise tokens_per_param to extend the trunk"]
        return []

    @property
    def ratios(self) -> list[float]:
        """The tokens-per-parameter budgets of every size, shortest first."""
        return sorted(self.tokens_per_param) if isinstance(self.tokens_per_param, list) else [self.tokens_per_param]

    @property
    def token_counts(self) -> list[int] | None:
        """training.tokens as a list, shortest first; None when it is not set."""
        if self.tokens is None:
            return None
        return sorted(self.tokens) if isinstance(self.tokens, list) else [self.tokens]

    @property
    def several_budgets(self) -> bool:
        """Whether every size trains at several token budgets (a list of tokens or of tokens_per_param, or WSD
        cooldowns): a design for L(N, D)."""
        return len(self.token_counts or self.ratios) > 1 or bool(self.cooldowns)

    @property
    def trunk_ratio(self) -> float:
        """The longest budget: a WSD trunk's planned length, and the confirmation run's tokens per parameter."""
        return self.ratios[-1]

    @property
    def branch_budgets(self) -> list[float] | None:
        """The budgets trained as WSD cooldown branches off one trunk per size (cooldowns, or a list of
        tokens_per_param with schedule wsd); None: each budget is a run of its own."""
        if self.cooldowns:
            return sorted(self.cooldowns)
        return self.ratios if self.schedule == "wsd" and len(self.ratios) > 1 else None

    def train_config(self, *, tokens: int, seed: int, device: str = "cpu", **size_options: Any) -> TrainConfig:
        """The armodels.train.TrainConfig of one run: this section's training options, by name (those left out keep
        TrainConfig's defaults), with the run's token budget, seed and resolved device (on a GPU, precision left
        out is "auto": bf16 where the GPU has it), and its size's own options (lr, batch_size, ...; None: not set)."""
        options = self.model_dump(exclude=set(PLANNING_FIELDS), exclude_none=True)
        if device == "cuda":
            options = {"precision": "auto", **options, "device": device}
        own = {k: v for k, v in size_options.items() if v is not None}
        return TrainConfig(tokens=tokens, **{**options, "seed": seed, **own})


class EvaluationConfig(_Strict):
    max_tokens: int = Field(200_000, gt=0)  # validation tokens scored per model
    samples: int = Field(3, ge=0)  # each a full window of models.seq_len tokens, starting a new document
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(40, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    # made models: score the mean probability of this many of the masks (orderings) they were trained with, an
    # ensemble that an order- or connectivity-agnostic MADE gains from; other families have one network
    ensemble: int = added_setting(1, ge=1)


class FitConfig(_Strict):
    # FLOPs convention of the compute fits (scaling/flops.py). per_layer: each family's own count of what it spends,
    # logits included (they dominate small models); the report also shows the fits under the others.
    convention: Literal[CONVENTIONS] = "per_layer"
    bootstrap: int = Field(1000, ge=0)
    holdout_top: int = Field(1, ge=0)  # backtest: refit without the largest compute budget(s), predict them
    # predict loss at these × the family's largest compute
    predict_multipliers: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = [10.0, 100.0, 1000.0]
    # Confirmation run: after the fit, train one compute-optimal model (the grid's tokens-per-parameter rule) at
    # `confirm` × the family's largest compute, and report its loss beside the fit's prediction.
    confirm: float | None = added_setting(None, ge=1)


class StudyConfig(_Strict):
    name: str = Field(pattern=SAFE_NAME)
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    # An image study sets `images` (and `image_tokenizers` for the code streams) instead of corpus and tokenizer.
    images: ImagesConfig | None = None
    # A text study's further tokenizers, by kind, each a stream of its own (a grid's `stream: char`); the value
    # takes tokenizer's keys, its kind being the key.
    text_tokenizers: dict[Literal["bpe", "char", "word"], TokenizerConfig] = added_setting({})
    image_tokenizers: dict[Literal["vqvae", "fsq", "lfq", "palette"], ImageTokenizerConfig] = {}
    shards: ShardConfig = ShardConfig()
    models: ModelsConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    fit: FitConfig = FitConfig()

    @property
    def is_image_study(self) -> bool:
        return self.images is not None

    @field_validator("text_tokenizers", mode="before")
    @classmethod
    def _kind_is_the_key(cls, value: Any) -> Any:
        """text_tokenizers.char is a char tokenizer: the key gives the kind, which the value need not repeat."""
        if not isinstance(value, dict):
            return value
        out = {}
        for kind, tok in value.items():
            if isinstance(tok, dict) and kind in TEXT_TOKENIZER_KINDS:  # an unknown key is the key's problem
                if tok.get("kind", kind) != kind:
                    raise ValueError(f"{kind}.kind: is {tok['kind']!r} under the key {kind!r}; leave it out (the key "
                                     "says the kind)")
                tok = {**tok, "kind": kind}
            out[kind] = tok
        return out

    def text_tokenizer_for(self, stream: str) -> TokenizerConfig:
        """The tokenizer of a text stream: the study's for "text", else that entry of text_tokenizers."""
        return self.tokenizer if stream == TEXT_STREAM else self.text_tokenizers[stream]

    def training_for(self, grid: GridConfig) -> TrainingConfig:
        """The training section as `grid` sees it: with the keys the grid overrides (GridConfig.training_overrides)."""
        overrides = grid.training_overrides()
        if not overrides:
            return self.training
        return TrainingConfig.model_validate({**self.training.model_dump(exclude_unset=True), **overrides})

    @model_validator(mode="after")
    def _streams_match_the_data(self):
        problems = []
        for i, grid in enumerate(self.models.grids):
            try:
                self.training_for(grid)
            except ValidationError as e:  # the study's training with this grid's overrides is not a valid one
                # a problem in one of training's own keys is named at the grid key that brought it about
                overridden = next(iter(grid.training_overrides()))
                problems += [f"models.grids.{i}." + (f"{where}: {message}" if where.split(".")[0] in GRID_TRAINING_KEYS
                                                     else f"{overridden}: with training.{where}: {message}" if where
                                                     else f"{overridden}: {message}")
                             for where, message in validation_problems(e)]
            if self.is_image_study and grid.stream in TEXT_STREAMS:
                problems.append(f"models.grids.{i}.stream: an image study models pixels, vqvae, fsq, lfq or palette, "
                                f"not {grid.stream}")
            if not self.is_image_study and grid.stream not in TEXT_STREAMS:
                problems.append(f"models.grids.{i}.stream: {grid.stream!r} needs an image study (an `images:` "
                                "section)")
            if grid.stream in TEXT_TOKENIZER_KINDS and grid.stream not in self.text_tokenizers:
                problems.append(f"models.grids.{i}.stream: {grid.stream!r} needs text_tokenizers.{grid.stream} (its "
                                "vocab_size and train_bytes)")
            if grid.stream in CODE_STREAMS and grid.stream not in self.image_tokenizers:
                problems.append(f"models.grids.{i}.stream: {grid.stream!r} needs image_tokenizers.{grid.stream}")
            if self.fit.convention not in flops_conventions(grid.family):
                problems.append(f"fit.convention: {self.fit.convention} does not count {grid.family} models' compute; "
                                f"use one of {', '.join(flops_conventions(grid.family))}")
        palette = self.image_tokenizers.get("palette")
        for key in sorted({"steps", "batch_size", "lr"} & (palette.model_fields_set if palette else set())):
            problems.append(f"image_tokenizers.palette.{key}: a palette is fitted by k-means, not trained in steps; "
                            "set model.iterations instead")
        if self.is_image_study and self.text_tokenizers:
            problems.append("text_tokenizers: text streams need a text study; an image study's tokenizers are "
                            "image_tokenizers")
        problems += self._conditioning_problems()
        if self.evaluation.ensemble > 1 and all(grid.family != "made" for grid in self.models.grids):
            problems.append("evaluation.ensemble: only made models average their masks, and no grid is made; leave it "
                            "at 1")
        if self.fit.confirm is not None:
            if self.training.tokens or self.training.flops_budgets:
                problems.append("fit.confirm: a confirmation run follows the grid's tokens-per-parameter rule; it "
                                "needs training.tokens_per_param (not training.tokens or flops_budgets)")
            for i, grid in enumerate(self.models.grids):
                if not {"n_layer", "n_embd"} <= {f.name for f in fields(armodels.family_classes(grid.family)[1])}:
                    problems.append(f"fit.confirm: the confirmation model is the grid's shape scaled in depth and "
                                    f"width (n_layer, n_embd); {grid.family} (models.grids.{i}) has no such fields")
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))  # each once, in order
        return self


    def _conditioning_problems(self) -> list[str]:
        """Class conditioning needs labelled images and a family that takes a class (its config has n_classes);
        whether the images have labels is checked when the study is planned (pipelines.plan.study_classes)."""
        problems = []
        for i, grid in enumerate(self.models.grids):
            if self.models.condition_of(grid) != "class":
                continue
            key = f"models.grids.{i}.condition" if grid.condition else "models.condition"
            if not self.is_image_study:
                problems.append(f"{key}: class conditioning needs labelled images (an `images:` section); text has "
                                "no classes")
            elif not armodels.takes_class(grid.family):
                problems.append(f"{key}: the {grid.family} family takes no class; class conditioning works with "
                                f"{', '.join(f for f in armodels.families() if armodels.takes_class(f))}")
        return problems


def resolve_config_path(spec: str | None) -> Path:
    """A config file path, or the name of a preset in configs/ (default: the text-default preset)."""
    if spec is None:
        return PRESETS_DIR / f"{DEFAULT_PRESET}.yaml"
    path = Path(spec)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{spec}.yaml"
    if preset.is_file() and path.suffix == "":
        return preset
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise UserError(f"config {spec} not found{did_you_mean(spec, names)}: give a YAML file or a preset name "
                    f"({', '.join(names)})")


def presets() -> dict[str, str]:
    """Each preset's name and what it is: the first sentence of its leading comment."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        comment = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("#").strip())
        sentence = re.split(r"(?<=\.)\s", " ".join(comment))[0].rstrip(".")
        out[path.stem] = sentence if len(sentence) <= 100 else sentence[:100].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return out


class ConfigLoader(yaml.SafeLoader):
    """YAML as people write configs: `1e-3` is a number. (PyYAML follows YAML 1.1, where a float needs a dot, and
    reads `1e-3` as a string; editors and the JSON schema follow YAML 1.2, where it is a number.)"""


ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                   re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def load_config(spec: str | None, overrides: Sequence[str] = ()) -> tuple[StudyConfig, Path]:
    """Read and validate a study config, with `overrides` (`--set KEY=VALUE`, see apply_overrides) applied first.
    One problem is a one-line UserError naming the file and the key; several are a ManyProblems listing each."""
    path = resolve_config_path(spec)
    try:
        data = yaml.load(path.read_text(), Loader=ConfigLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a YAML mapping of settings, got {type(data).__name__}")
    data, set_by = apply_overrides(data, overrides)
    try:
        return StudyConfig.model_validate(data), path
    except ValidationError as e:
        problems = [f"{where or '(top level)'}: {message}{_from_override(where, set_by)}"
                    for where, message in validation_problems(e)]
    if len(problems) == 1:
        raise UserError(f"config {path}: {problems[0]}")
    raise ManyProblems(f"config {path}: {len(problems)} problems:", problems)


def _from_override(where: str, set_by: dict[str, str]) -> str:
    """' (from --set KEY=VALUE)' when the problem at `where` is in what an override set, or is a list entry (a
    size) that an override changed a field of."""
    for key, item in set_by.items():
        inside = where == key or where.startswith(f"{key}.")
        if inside or (key.startswith(f"{where}.") and where.rsplit(".", 1)[-1].isdigit()):
            return f" (from --set {item})"
    return ""


def validation_problems(e: ValidationError) -> list[tuple[str, str]]:
    """(key path such as 'models.grids.0.sizes.1.n_embd', what is wrong and what to do) for every problem."""
    problems = []
    for error in e.errors():
        loc = [str(p) for p in error["loc"]]
        # A validator that checks nested entries reports one 'sizes.2.n_layer: ...' line per problem.
        for message in error["msg"].removeprefix("Value error, ").split("\n"):
            path = list(loc)
            nested = re.match(r"^([\w.]+): (.*)$", message)
            if nested:
                path.append(nested.group(1))
                message = nested.group(2)
            if error["type"] == "extra_forbidden":
                section = _section_at(error["loc"][:-1])
                keys = list(section.model_fields) if section else []
                message = (f"unknown key{did_you_mean(loc[-1], keys)}; "
                           + (f"the keys here: {', '.join(keys)}" if keys else "check its spelling"))
            elif "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
            problems.append((".".join(path), message))
    return problems


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for the choice closest to a misspelt `word`, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _section_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The config section (pydantic model) at a key path from the top of a study config, or None."""
    section: Any = StudyConfig
    for part in loc:
        section = _without_none(section)
        if isinstance(section, type) and issubclass(section, BaseModel) and part in section.model_fields:
            section = section.model_fields[part].annotation
        elif get_origin(section) in (list, dict):  # an entry of a list, or the value of a key of a dict
            section = get_args(section)[-1]
        else:
            return None
    section = _without_none(section)
    return section if isinstance(section, type) and issubclass(section, BaseModel) else None


def _without_none(annotation: Any) -> Any:
    """`X` for `X | None`."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def parse_override(item: str) -> tuple[list[str], Any]:
    """`KEY=VALUE` as (the key's path, the value read as YAML: `1e-3` a number, `[1, 2]` a list, `null` None)."""
    key, eq, text = item.partition("=")
    path = key.strip().split(".")
    if not eq or not all(path):
        raise UserError(f"--set {item}: give KEY=VALUE with a dotted key, e.g. training.lr=1e-3 or "
                        "models.grids.0.sizes.1.n_embd=48 (list entries by their index, from 0)")
    try:
        value = yaml.load(text, Loader=ConfigLoader) if text.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None
    return path, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """A copy of the config `data` with each `KEY=VALUE` set, and which override set each key path. A key is a
    dotted path from the top (`training.lr`); a list entry is its index, from 0 (`models.grids.0.sizes.1.n_embd`).
    Missing sections are created, so a misspelt key reaches validation, which names it (did you mean ...)."""
    data, set_by = copy.deepcopy(data), {}
    for item in overrides:
        path, value = parse_override(item)
        parent = data
        for depth, part in enumerate(path):
            where = ".".join(path[:depth + 1])
            last = depth == len(path) - 1
            if isinstance(parent, list):
                if not (part.isdigit() and int(part) < len(parent)):
                    raise UserError(f"--set {item}: {'.'.join(path[:depth]) or 'the config'} is a list of "
                                    f"{len(parent)}; give an index from 0 to {len(parent) - 1} (got {part!r})")
                part = int(part)
            elif not isinstance(parent, dict):
                raise UserError(f"--set {item}: {'.'.join(path[:depth])} is {parent!r}, not a section with keys")
            elif not last and parent.get(part) is None:
                parent[part] = {}  # a section the file leaves out
            if last:
                parent[part] = value
            else:
                parent = parent[part]
        set_by[where] = item
    return data, set_by


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a study config, for editors (YAML language server) and other tools. Beyond pydantic's
    schema, a grid's `family` lists the families, and its `sizes` list each family's own fields."""
    schema = StudyConfig.model_json_schema()
    _drop_key(schema, OMITTED_AT_DEFAULT)
    grid = schema["$defs"]["GridConfig"]
    grid["properties"]["family"]["enum"] = armodels.families()
    whole = {"type": "integer", "minimum": 1}
    options = {"name": {"type": "string", "pattern": SAFE_NAME}, "tokens": whole, "num_workers": whole,
               "seeds": whole, "batch_size": whole, "warmup_tokens": {"type": "integer", "minimum": 0},
               "lr": {"type": "number", "exclusiveMinimum": 0}, "beta2": {"type": "number", "minimum": 0,
                                                                          "exclusiveMaximum": 1},
               "lr_sweep": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
               "device": {"enum": list(DEVICES)}, "gpus_per_worker": {"type": "number", "exclusiveMinimum": 0}}
    assert set(options) == set(SIZE_OPTIONS), "a size option without a schema"
    grid["allOf"] = []
    for family in armodels.families():
        config_class = armodels.family_classes(family)[1]
        own = TypeAdapter(config_class).json_schema()
        set_by_study = armodels.fields_set_by_study(family)
        size = {"type": "object", "additionalProperties": False,
                "properties": {**{k: v for k, v in own.get("properties", {}).items() if k not in set_by_study},
                               **options}}
        chosen = {"properties": {"family": {"const": family}}, "required": ["family"]}
        if family == GridConfig.model_fields["family"].default:  # a grid without `family` is of this one
            chosen = {"anyOf": [chosen, {"not": {"required": ["family"]}}]}
        grid["allOf"].append({"if": chosen, "then": {"properties": {"sizes": {"items": size}}}})
    return schema


def _drop_key(node: Any, key: str) -> None:
    """Remove `key` from every mapping in a JSON tree (arscale's own markers mean nothing to a schema's users)."""
    if isinstance(node, dict):
        node.pop(key, None)
        for value in node.values():
            _drop_key(value, key)
    elif isinstance(node, list):
        for value in node:
            _drop_key(value, key)
