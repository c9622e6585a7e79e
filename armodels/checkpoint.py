"""Mid-run training checkpoints: what a run needs to continue exactly where it stopped.

A checkpoint is the folder `checkpoint/` inside a run's output folder. Without ZeRO (zero_stage 0) rank 0 writes
it alone:

    model.safetensors   the weights
    optimizer.pt        optimizer, LR schedule and RNG state: tensors, numbers and lists only, so it loads with
                        torch.load(weights_only=True) and cannot run code
    state.json          the step it was taken after, the curve so far, the run it belongs to, the ZeRO stage, world
                        size and precision it was saved with, and the sha256 of every other file (checked on load)

With ZeRO stages 1-3 the optimizer state (under stage 3 the weights too) is split across the workers, and every
worker writes its own part with DeepSpeed's own checkpoint code (engine.save_checkpoint), in a folder named after
the step (a new name each time, so that an object store's copy of the previous checkpoint stays whole until the
new state.json replaces the old one):

    step-<n>/mp_rank_00_model_states.pt                         stages 1-2: weights, LR schedule, RNG (rank 0)
    step-<n>/zero_pp_rank_<r>_mp_rank_00_model_states.pt        stage 3: rank r's part of the same
    step-<n>/[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt rank r's partition of the optimizer state
    state.json

DeepSpeed's files are pickles. They are read with torch.load(weights_only=True), which unpickles tensors,
containers and numbers plus the three small DeepSpeed record classes these files hold (`_zero_globals`) and refuses
anything else, so a crafted file cannot run code; each rank checks every file it reads against state.json's sha256
first. A ZeRO checkpoint resumes only under the stage, number of workers and precision it was saved with (the
partitions do not re-shard); armodels.train turns any other into a one-line error.

Both kinds are written as `checkpoint.tmp/`, state.json last (by rank 0, once every rank's files are on disk and,
for a study in an object store, in the store: `on_files`), and swapped in by renames, so a crash at any moment
leaves one whole checkpoint (`checkpoint/`, or `checkpoint.old/` in the instant between the renames) and never a
partial one. Every rank must see the folder rank 0 commits (one machine, or a shared filesystem) unless the files
go to an object store; otherwise ZeRO checkpoints are skipped with a note (there is nowhere to keep them whole).
The training data of step s is a function of s alone (armodels.data.TokenWindows), so restoring the step restores
the data position: a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from armodels.files import file_sha256, read_json, write_json_atomic

NAME = "checkpoint"
CHECKPOINT_FOLDERS = (NAME, f"{NAME}.old", f"{NAME}.tmp")  # a run folder's checkpoint, whole or mid-swap
FORMAT = "arscale-checkpoint/1"
WRITER = ".writer"  # a token rank 0 puts in checkpoint.tmp/: a rank that reads it back writes into the same folder
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")

# Called on every rank that wrote checkpoint files, with the folder being written, the names (relative to it) of
# the files that rank wrote, and the checkpoint's step, before state.json exists: a study in an object store
# uploads them there.
OnFiles = Callable[[Path, list[str], int], None]


def file_rank(name: str) -> int | None:
    """The rank whose partition the checkpoint file `name` is (DeepSpeed names them zero_pp_rank_<r>_...), or None
    for a file that every rank reads."""
    found = _RANK_FILE.search(name.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


def is_plain_name(name: object) -> bool:
    """A checkpoint file's name as state.json may list it: a relative path that stays inside the folder."""
    return isinstance(name, str) and bool(name) and not name.startswith("/") and ".." not in name.split("/")


@dataclass
class Checkpoint:
    step: int  # optimizer steps completed
    state: dict  # state.json: curve, losses, elapsed seconds, ...
    optimizer: dict | None  # zero_stage 0: {"optimizer", "scheduler", "rng"}; ZeRO: None (see `loaded`)
    folder: Path
    loaded: dict[str, object] = field(default_factory=dict)  # ZeRO: this rank's files, checked and unpickled

    @property
    def zero_stage(self) -> int:
        return self.state.get("zero_stage", self.state.get("run", {}).get("train", {}).get("zero_stage", 0))

    @property
    def world_size(self) -> int | None:
        return self.state.get("world_size")

    @property
    def precision(self) -> str | None:
        return self.state.get("precision")

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the saved weights into `model`, tied weights included (zero_stage 0)."""
        from safetensors.torch import load_file

        weights = load_file(str(self.folder / "model.safetensors"))
        weights.update({alias: weights[name] for alias, name in self.state["aliases"].items()})
        model.load_state_dict(weights)

    def read(self, path: str | os.PathLike) -> object:
        """The contents of the file `path` of this ZeRO checkpoint, for DeepSpeed's loader: from those this rank
        checked and loaded already, or checked against state.json and loaded safely now."""
        name = Path(os.path.relpath(path, self.folder)).as_posix()
        if name in self.loaded:
            return self.loaded.pop(name)
        if name not in self.state["files"]:
            raise ValueError(f"{self.folder / name} is not part of the checkpoint (its state.json does not list it); "
                             f"delete {self.folder} to restart the run from the beginning")
        _check_file(self.folder, name, self.state["files"][name])
        return _safe_load(self.folder, name)


def save_checkpoint(out_dir: Path, step: int, model: torch.nn.Module, optimizer: dict, state: dict,
                    on_files: OnFiles | None = None) -> Path:
    """Write a zero_stage 0 checkpoint after `step` optimizer steps (rank 0 alone), replacing the previous one
    atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp, final, old = _folders(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        weights, aliases = _unique_tensors(model.state_dict())
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        files = {name: file_sha256(tmp / name) for name in ("model.safetensors", "optimizer.pt")}
    except Exception as e:  # disk full, quota, permissions: the previous checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(_write_error(tmp, e)) from None
    if on_files:
        on_files(tmp, sorted(files), step)
    try:
        write_json_atomic(tmp / "state.json", {"format": FORMAT, "step": step, "files": files,
                                               "aliases": aliases, **state})
        _fsync_dir(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(_write_error(tmp, e)) from None
    _swap_in(tmp, final, old)
    return final


def save_zero_checkpoint(out_dir: Path, step: int, engine, state: dict, client_state: dict,
                         on_files: OnFiles | None = None) -> Path | None:
    """Write a ZeRO checkpoint after `step` optimizer steps: a collective, called by every rank with the same `state`
    (written by rank 0); `client_state` (tensors and numbers: the RNG) is saved in DeepSpeed's files and returned by
    `load_zero_state`. Returns the checkpoint's folder, or None when it could not be kept whole: some rank writes into
    a folder rank 0 does not see and there is no object store (`on_files`) to gather the files in.

    Every rank learns of a failure on any rank (disk full, a failed upload) and raises the same OSError, naming what
    could not be written; the previous checkpoint stays as it was."""
    import torch.distributed as dist

    rank = dist.get_rank()
    out_dir = Path(out_dir)
    tmp, final, old = _folders(out_dir)
    tag = f"step-{step}"
    writer = engine.checkpoint_engine
    token = uuid.uuid4().hex if rank == 0 else None
    problem = None
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            (tmp / WRITER).write_text(token)
        except OSError as e:
            problem = _write_error(tmp, e)
    views = gather_json({"token": token, "error": problem})
    _raise_first([v["error"] for v in views], OSError)
    shares = _read_text(tmp / WRITER) == views[0]["token"]  # on a node of its own, this rank has its own folder

    mine: dict[str, str] = {}
    writer.errors.clear()
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(str(tmp), tag=tag, client_state=client_state, save_latest=False)
        problem = writer.errors[0] if writer.errors else None
        if problem is None:
            mine = {name: file_sha256(tmp / name) for name in _own_files(tmp, tag, rank)}
    except Exception as e:
        problem = _write_error(tmp, e)
    views = gather_json({"files": mine, "shares": shares, "error": problem})
    whole = all(v["shares"] for v in views) or on_files is not None
    errors = [v["error"] for v in views]
    if any(errors) or not whole:
        _discard(tmp, mine, rank, shares)
        _raise_first(errors, OSError)
        if rank == 0:
            print(f"note: no ZeRO checkpoint saved in {out_dir}: its workers write into folders that are not shared "
                  "(other machines); put the run on a shared filesystem or the study in an object store to resume "
                  "interrupted runs", flush=True)
        return None

    if on_files:
        try:
            on_files(tmp, sorted(mine), step)
        except Exception as e:
            problem = f"could not upload the checkpoint files of {tmp} ({type(e).__name__}: {str(e).strip()[:200]})"
        _raise_first(gather_json(problem), OSError)  # and every rank's files are in the store before state.json

    if rank == 0:
        files = {name: digest for v in views for name, digest in v["files"].items()}
        try:
            (tmp / WRITER).unlink(missing_ok=True)
            write_json_atomic(tmp / "state.json", {"format": FORMAT, "step": step, "files": files, "tag": tag,
                                                   **state})
            _fsync_dir(tmp)
            _swap_in(tmp, final, old)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            problem = _write_error(tmp, e)
    _raise_first(gather_json(problem), OSError)
    if not shares:  # this rank's own folder: its files are in the store now
        _discard(tmp, mine, rank, shares)
    return final


def load_checkpoint(out_dir: Path, rank: int = 0) -> Checkpoint | None:
    """The checkpoint in `out_dir`, or None if there is none. The files rank `rank` reads are checked against their
    checksums and loaded without running code; a damaged one raises ValueError naming the file."""
    out_dir = Path(out_dir)
    folder = next((d for d in (out_dir / NAME, out_dir / f"{NAME}.old") if (d / "state.json").is_file()), None)
    if folder is None:
        return None
    state = read_json(folder / "state.json", "checkpoint state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        kind = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{folder} is not an arscale checkpoint (format {kind!r}); delete it to restart the run")
    try:
        step, files = int(state["step"]), dict(state["files"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{folder / 'state.json'} is incomplete; delete {folder} to restart the run") from None
    if not all(is_plain_name(name) for name in files):
        raise ValueError(f"{folder / 'state.json'} lists files outside its folder; delete {folder} to restart the run")
    mine = [name for name in files if file_rank(name) in (None, rank)]
    for name in mine:
        _check_file(folder, name, files[name])
    if "tag" not in state:  # zero_stage 0
        return Checkpoint(step, state, _safe_load(folder, "optimizer.pt", zero=False), folder)
    return Checkpoint(step, state, None, folder, {name: _safe_load(folder, name) for name in mine})


def install_checkpoint_engine(engine) -> None:
    """Route a DeepSpeed engine's checkpoint files through this module: written as DeepSpeed writes them (with
    errors kept for save_zero_checkpoint to share among the ranks instead of raised mid-collective), read only from
    a checked Checkpoint, and no recovery scripts copied into checkpoints."""
    engine.checkpoint_engine = _engine_class()(engine._config)
    engine._copy_recovery_script = lambda save_path: None


def load_zero_state(engine, checkpoint: Checkpoint) -> dict:
    """Every rank: the partitioned DeepSpeed state of `checkpoint` into `engine` (weights, this rank's optimizer
    partition, LR schedule; the engine must come from `install_checkpoint_engine`); returns the client state saved
    with it."""
    reader = engine.checkpoint_engine
    reader.source = checkpoint
    try:
        path, client_state = engine.load_checkpoint(str(checkpoint.folder), tag=checkpoint.state["tag"],
                                                    load_module_strict=True, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
    finally:
        reader.source = None
        checkpoint.loaded.clear()
    if path is None:
        raise ValueError(f"{checkpoint.folder} holds no DeepSpeed checkpoint {checkpoint.state['tag']}; delete it to "
                         "restart the run from the beginning")
    return client_state


def gather_json(obj) -> list:
    """`obj` (JSON data) of every rank of the torch.distributed group, in rank order: sent as bytes in a CPU tensor,
    so no rank unpickles what another sent."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    world = dist.get_world_size()
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:data.numel()] = data
    received = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(received, padded)
    return [json.loads(bytes(r[:int(s.item())].tolist())) for r, s in zip(received, sizes)]


def remove_checkpoint(out_dir: Path) -> None:
    """Called when the run has finished: the final weights are saved and the optimizer state is no longer needed."""
    for suffix in ("", ".old", ".tmp"):
        shutil.rmtree(Path(out_dir) / f"{NAME}{suffix}", ignore_errors=True)


def _folders(out_dir: Path) -> tuple[Path, Path, Path]:
    return out_dir / f"{NAME}.tmp", out_dir / NAME, out_dir / f"{NAME}.old"


def _swap_in(tmp: Path, final: Path, old: Path) -> None:
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _own_files(tmp: Path, tag: str, rank: int) -> list[str]:
    """The files of checkpoint `tag` that `rank` wrote: its partitions, and on rank 0 the files every rank reads."""
    return sorted(p.relative_to(tmp).as_posix() for p in (tmp / tag).rglob("*")
                  if p.is_file() and (file_rank(p.name) or 0) == rank)


def _discard(tmp: Path, mine: dict[str, str], rank: int, shares: bool) -> None:
    """Drop a checkpoint being written: rank 0 its folder, a rank with a folder of its own its files there."""
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    elif not shares:
        for name in mine:
            (tmp / name).unlink(missing_ok=True)


def _raise_first(problems: list, error: type[Exception]) -> None:
    problems = [p for p in problems if p]
    if problems:
        raise error(problems[0])


def _write_error(path: Path, e: BaseException) -> str:
    return (f"could not write the checkpoint {path} ({type(e).__name__}: {str(e).strip()[:200]}); "
            "free some disk space or make the folder writable, then run again to resume")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _check_file(folder: Path, name: str, digest: str) -> None:
    if not (folder / name).is_file() or file_sha256(folder / name) != digest:
        raise ValueError(f"{folder / name} is missing or does not match its checksum; delete {folder} "
                         "to restart the run from the beginning")


def _zero_globals() -> list:
    """The classes besides tensors, containers and numbers that DeepSpeed's ZeRO checkpoint files hold: records
    whose unpickling sets fields (or, for the enum, looks a member up) and runs no code of the file's choosing."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _safe_load(folder: Path, name: str, zero: bool = True) -> object:
    """torch.load(weights_only=True), with the ZeRO record classes allowed for DeepSpeed's files."""
    try:
        with torch.serialization.safe_globals(_zero_globals() if zero else []):
            return torch.load(folder / name, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error means the file holds more than plain tensors, numbers and records
        raise ValueError(f"{folder / name} cannot be loaded safely ({type(e).__name__}); "
                         f"delete {folder} to restart the run") from None


_ENGINE_CLASS = None


def _engine_class():
    """A DeepSpeed checkpoint engine (made on first use: DeepSpeed is a heavy import) that writes as DeepSpeed's
    own does but keeps write errors, and reads only through `source`, a checked Checkpoint."""
    global _ENGINE_CLASS
    if _ENGINE_CLASS is None:
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        class ArscaleCheckpointEngine(TorchCheckpointEngine):
            def __init__(self, config_params=None):
                super().__init__(config_params)
                self.errors: list[str] = []
                self.source: Checkpoint | None = None

            def create(self, info) -> None:
                pass

            def makedirs(self, path, exist_ok=False) -> None:
                try:
                    os.makedirs(path, exist_ok=exist_ok)
                except OSError as e:
                    self.errors.append(_write_error(Path(path), e))

            def save(self, state_dict, path: str) -> None:
                try:
                    super().save(state_dict, path)
                except Exception as e:
                    self.errors.append(_write_error(Path(path), e))

            def load(self, path: str, map_location=None):
                if self.source is None:
                    raise ValueError(f"{path}: checkpoints are read through armodels.checkpoint.load_zero_state")
                return self.source.read(path)

        _ENGINE_CLASS = ArscaleCheckpointEngine
    return _ENGINE_CLASS


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each distinct tensor once (tied weights are one tensor under two names), plus alias -> stored name.
    Copies, since under ZeRO the parameters are views into one flat buffer that safetensors will not store."""
    weights: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in first_name:
            aliases[name] = first_name[key]
        else:
            first_name[key] = name
            weights[name] = tensor.detach().clone().contiguous()
    return weights, aliases


def _fsync_dir(folder: Path) -> None:
    """Flush the files of `folder` to disk before it is renamed into place (a power cut then loses nothing)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
