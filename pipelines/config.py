"""Study configs: the YAML schema, validated with pydantic (unknown keys and wrong types are errors with their path).

Training options left out fall back to the defaults of `armodels.train.TrainConfig`, so each default lives in
one place. See configs/text-default.yaml for a commented example.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

import armodels
from armodels.bpe import MAX_VOCAB_SIZE
from armodels.config_fields import OMITTED_AT_DEFAULT
from armodels.train import TrainConfig, flops_conventions
from pipelines.errors import UserError
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


class ImageTokenizerConfig(_Strict):
    """A discrete autoencoder (VQ-VAE or FSQ) whose codes are one of an image study's token streams."""

    steps: int = Field(1000, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    model: dict[str, Any] = {}  # fields of armodels.vqvae.VQVAEConfig or armodels.fsq.FSQConfig


TEXT_STREAM, IMAGE_STREAMS = "text", ("pixels", "vqvae", "fsq")


class TokenizerConfig(_Strict):
    # 256 bytes + end-of-document + at least one merge; at most what the BPE trainer can allocate for
    vocab_size: int = Field(1024, ge=258, le=MAX_VOCAB_SIZE)
    train_bytes: int = Field(8_000_000, gt=0)  # BPE is trained on a sample of the training split this large


class ShardConfig(_Strict):
    shard_tokens: int = Field(1_000_000, gt=0)


# Keys of a size entry that belong to the study, not to the family's config.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # names that become folder names cannot leave the study folder
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
    # The token stream the grid models: "text" (BPE tokens) in text studies; in image studies "pixels" (8-bit
    # values in raster order), "vqvae" or "fsq" (the code grid of that image tokenizer, in raster order).
    stream: Literal["text", "pixels", "vqvae", "fsq"] = TEXT_STREAM
    sizes: list[dict[str, Any]] = Field(min_length=1)
    # Overrides training.tokens_per_param for this grid: families differ in how many tokens a parameter is worth
    # (a PixelCNN over pixels wants far more than a transformer over codes).
    tokens_per_param: float | None = added_setting(None, gt=0)

    @property
    def series(self) -> str:
        """What the fits and the report compare: the family, or in image studies the stream and the family."""
        return self.family if self.stream == TEXT_STREAM else f"{self.stream}-{self.family}"

    @model_validator(mode="after")
    def _sizes_fit_the_family(self):
        if self.family not in armodels.families():
            raise ValueError(f"unknown family {self.family!r}; one of {', '.join(armodels.families())}")
        config_class = armodels.family_classes(self.family)[1]
        known = {f.name for f in fields(config_class)}
        hints = get_type_hints(config_class)
        if armodels.is_image_family(self.family) and self.stream not in IMAGE_STREAMS:
            raise ValueError(f"{self.family} models images (height × width), not token streams; use it in an "
                             "image study's pixels, vqvae or fsq stream")
        set_by_study = armodels.fields_set_by_study(self.family)
        for i, size in enumerate(self.sizes):
            name = size.get("name")
            if name is not None and not (isinstance(name, str) and re.fullmatch(SAFE_NAME, name)):
                raise ValueError(f"sizes.{i}.name: {name!r} names a folder: use letters, digits, '.', '_', '-' "
                                 "and start with a letter or digit")
            for key, (valid, what) in SIZE_OPTION_CHECKS.items():
                if key in size and not valid(size[key]):
                    raise ValueError(f"sizes.{i}.{key}: {what} (got {size[key]!r})")
            if "lr_sweep" in size and (problem := check_lr_sweep(size["lr_sweep"])):
                raise ValueError(f"sizes.{i}.lr_sweep: {problem}")
            if size.get("device", "auto") not in DEVICES:
                raise ValueError(f"sizes.{i}.device: one of {', '.join(DEVICES)} (got {size['device']!r})")
            if "gpus_per_worker" in size and (problem := check_gpus_per_worker(size["gpus_per_worker"])):
                raise ValueError(f"sizes.{i}.gpus_per_worker: {problem}")
            model = model_fields(size)
            for key in model:
                if key in set_by_study:
                    raise ValueError(f"sizes.{i}.{key}: set by the study (from the tokenizer and the data)")
                if key not in known:
                    raise ValueError(f"sizes.{i}.{key}: {self.family} has no such field; its fields: "
                                     f"{', '.join(sorted(known - set(set_by_study)))}")
                if problem := field_type_problem(model[key], hints[key]):
                    raise ValueError(f"sizes.{i}.{key}: {problem} (got {model[key]!r})")
            try:
                TypeAdapter(config_class).validate_python(model)
            except ValidationError as e:
                where, _, message = describe_validation_error(e).partition(": ")
                where = "" if where == "(top level)" else f".{where}"
                raise ValueError(f"sizes.{i}{where}: {message}") from None
        return self


class ModelsConfig(_Strict):
    seq_len: int = Field(128, gt=0)  # tokens per training window, for every family (image studies: one image)
    grids: list[GridConfig] = Field(min_length=1)


# Fields of `training` that plan the runs (token budgets, workers, devices); every other one is a TrainConfig field.
PLANNING_FIELDS = ("tokens", "tokens_per_param", "tokens_per_param_of", "min_tokens", "max_tokens", "flops_budgets",
                   "num_workers", "cpus_per_worker", "device", "gpus_per_worker", "seeds", "lr_sweep")


class TrainingConfig(_Strict):
    # Token budget per size: `tokens` for all, else tokens_per_param × the size's parameters (a compute-optimal
    # design when the ratio is near the optimum: every run then sits on the compute frontier). min_tokens and
    # max_tokens clip it; a cap that gives several sizes the same tokens turns L(C) into a fixed-data curve, so
    # the default is no cap.
    tokens: int | None = Field(None, gt=0)
    tokens_per_param: float = Field(20.0, gt=0)
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
        if problem := check_gpus_per_worker(self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker: {problem}")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens {self.min_tokens} exceeds max_tokens {self.max_tokens}")
        if self.lr_sweep is not None and (problem := check_lr_sweep(self.lr_sweep)):
            raise ValueError(f"lr_sweep: {problem}")
        if self.flops_budgets and (min(self.flops_budgets) <= 0 or self.tokens):
            raise ValueError("flops_budgets must be positive FLOPs and replace `tokens` (leave `tokens` out)")
        return self

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
    image_tokenizers: dict[Literal["vqvae", "fsq"], ImageTokenizerConfig] = {}
    shards: ShardConfig = ShardConfig()
    models: ModelsConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    fit: FitConfig = FitConfig()

    @property
    def is_image_study(self) -> bool:
        return self.images is not None

    @model_validator(mode="after")
    def _streams_match_the_data(self):
        for i, grid in enumerate(self.models.grids):
            if self.is_image_study and grid.stream == TEXT_STREAM:
                raise ValueError(f"models.grids.{i}.stream: an image study models pixels, vqvae or fsq, not text")
            if not self.is_image_study and grid.stream != TEXT_STREAM:
                raise ValueError(f"models.grids.{i}.stream: {grid.stream!r} needs an image study (an `images:` "
                                 "section)")
            if grid.stream in ("vqvae", "fsq") and grid.stream not in self.image_tokenizers:
                raise ValueError(f"models.grids.{i}.stream: {grid.stream!r} needs image_tokenizers.{grid.stream}")
            if self.fit.convention not in flops_conventions(grid.family):
                raise ValueError(f"fit.convention: {self.fit.convention} does not count {grid.family} models' compute; "
                                 f"use one of {', '.join(flops_conventions(grid.family))}")
        if self.fit.confirm is not None:
            if self.training.tokens or self.training.flops_budgets:
                raise ValueError("fit.confirm: a confirmation run follows the grid's tokens-per-parameter rule; it "
                                 "needs training.tokens_per_param (not training.tokens or flops_budgets)")
            for i, grid in enumerate(self.models.grids):
                if not {"n_layer", "n_embd"} <= {f.name for f in fields(armodels.family_classes(grid.family)[1])}:
                    raise ValueError(f"fit.confirm: the confirmation model is the grid's shape scaled in depth and "
                                     f"width (n_layer, n_embd); {grid.family} (models.grids.{i}) has no such fields")
        return self


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
    presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise UserError(f"config {spec} not found: give a YAML file or a preset name ({presets})")


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


def load_config(spec: str | None) -> tuple[StudyConfig, Path]:
    """Read and validate a study config; every problem becomes a one-line UserError naming the file and key."""
    path = resolve_config_path(spec)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a YAML mapping of settings, got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(data), path
    except ValidationError as e:
        raise UserError(f"config {path}: {describe_validation_error(e)}") from None


def describe_validation_error(e: ValidationError) -> str:
    """'training.lr: Input should be a valid number (got 'fast')' — plus a count if there are more problems."""
    errors = e.errors()
    first = errors[0]
    path = [str(p) for p in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    # Validators that check nested entries report "sizes.2.n_layer: ..."; fold that into the path.
    nested = re.match(r"^([\w.]+): (.*)$", message)
    if nested:
        path.append(nested.group(1))
        message = nested.group(2)
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and the preset configs for the valid keys)"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{'.'.join(path) or '(top level)'}: {message}{more}"
