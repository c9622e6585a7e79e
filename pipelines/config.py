"""Study configs: the YAML schema, validated with pydantic (unknown keys and wrong types are errors with their path).

Training options left out fall back to the defaults of `armodels.train.TrainConfig`, so each default lives in
one place. See configs/text-default.yaml for a commented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import UserError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "text-default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TokenizerConfig(_Strict):
    vocab_size: int = Field(1024, ge=258)  # 256 bytes + end-of-document + at least one merge
    train_bytes: int = Field(8_000_000, gt=0)  # BPE is trained on a sample of the training split this large


class ShardConfig(_Strict):
    shard_tokens: int = Field(1_000_000, gt=0)


class ModelSize(_Strict):
    n_layer: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    n_head: int = Field(gt=0)
    name: str | None = None  # default l{n_layer}-d{n_embd}
    tokens: int | None = Field(None, gt=0)  # overrides the budget rule for this size
    lr: float | None = Field(None, gt=0)  # overrides training.lr for this size

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        return self

    @property
    def label(self) -> str:
        return self.name or f"l{self.n_layer}-d{self.n_embd}"


class ModelsConfig(_Strict):
    family: Literal["transformer"] = "transformer"
    seq_len: int = Field(128, gt=0)
    sizes: list[ModelSize] = Field(min_length=1)

    @field_validator("sizes")
    @classmethod
    def _unique_names(cls, sizes):
        labels = [s.label for s in sizes]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"model sizes must have distinct names; repeated: {', '.join(dupes)}")
        return sizes


class TrainingConfig(_Strict):
    # Token budget per size: `tokens` for all, else tokens_per_param × non-embedding params, clipped.
    tokens: int | None = Field(None, gt=0)
    tokens_per_param: float = Field(20.0, gt=0)
    min_tokens: int = Field(250_000, gt=0)
    max_tokens: int = Field(2_000_000, gt=0)
    num_workers: int = Field(1, gt=0)  # Ray Train workers per run (DeepSpeed data parallel)
    cpus_per_worker: int = Field(1, gt=0)
    # Passed to armodels.train.TrainConfig; None means its default.
    batch_size: int | None = Field(None, gt=0)
    micro_batch_size: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    warmup_fraction: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    beta1: float | None = Field(None, ge=0, lt=1)
    beta2: float | None = Field(None, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    zero_stage: Literal[0, 1, 2, 3] | None = None
    precision: Literal["fp32", "bf16"] | None = None
    eval_points: int | None = Field(None, ge=0)
    eval_windows: int | None = Field(None, gt=0)
    log_every: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _budget_bounds(self):
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens {self.min_tokens} exceeds max_tokens {self.max_tokens}")
        return self


class EvaluationConfig(_Strict):
    max_tokens: int = Field(200_000, gt=0)  # validation tokens scored per model
    samples: int = Field(3, ge=0)
    sample_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(40, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)


class FitConfig(_Strict):
    convention: Literal["6ND", "per_layer"] = "6ND"  # FLOPs convention of the compute fit
    bootstrap: int = Field(1000, ge=0)
    holdout_top: int = Field(1, ge=0)
    predict_multipliers: list[float] = [10.0, 100.0, 1000.0]  # predict loss at these × the largest compute


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    shards: ShardConfig = ShardConfig()
    models: ModelsConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    fit: FitConfig = FitConfig()


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
    """'training.lr: Input should be a valid number (got "fast")' — plus a count if there are more problems."""
    errors = e.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and the preset configs for the valid keys)"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"
