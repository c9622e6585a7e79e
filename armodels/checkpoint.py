"""Mid-run training checkpoints: what a run needs to continue exactly where it stopped.

A checkpoint is the folder `checkpoint/` inside a run's output folder:

    model.safetensors   the weights
    optimizer.pt        optimizer, LR schedule and RNG state: tensors, numbers and lists only, so it loads with
                        torch.load(weights_only=True) and cannot run code
    state.json          the step it was taken after, the curve so far, the run it belongs to, and the sha256 of
                        the two files above (checked on load)

It is written as `checkpoint.tmp/` and swapped in by renames, so a crash at any moment leaves one whole
checkpoint (`checkpoint/`, or `checkpoint.old/` in the instant between the renames) and never a partial one.
The training data of step s is a function of s alone (armodels.data.TokenWindows), so restoring the step restores
the data position: a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from armodels.files import file_sha256, read_json, write_json_atomic

NAME = "checkpoint"
FORMAT = "arscale-checkpoint/1"


@dataclass
class Checkpoint:
    step: int  # optimizer steps completed
    state: dict  # state.json: curve, losses, elapsed seconds, ...
    optimizer: dict  # {"optimizer": ..., "scheduler": ..., "rng": ...}
    folder: Path

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the saved weights into `model`, tied weights included."""
        from safetensors.torch import load_file

        weights = load_file(str(self.folder / "model.safetensors"))
        weights.update({alias: weights[name] for alias, name in self.state["aliases"].items()})
        model.load_state_dict(weights)


def save_checkpoint(out_dir: Path, step: int, model: torch.nn.Module, optimizer: dict, state: dict) -> Path:
    """Write a checkpoint after `step` optimizer steps, replacing the previous one atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp, final, old = out_dir / f"{NAME}.tmp", out_dir / NAME, out_dir / f"{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        weights, aliases = _unique_tensors(model.state_dict())
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        files = {name: file_sha256(tmp / name) for name in ("model.safetensors", "optimizer.pt")}
        write_json_atomic(tmp / "state.json", {"format": FORMAT, "step": step, "files": files,
                                               "aliases": aliases, **state})
        _fsync_dir(tmp)
    except Exception as e:  # disk full, quota, permissions: the previous checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write the checkpoint {tmp} ({type(e).__name__}: {str(e).strip()[:200]}); "
                      "free some disk space or make the folder writable, then run again to resume") from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The checkpoint in `out_dir`, or None if there is none. A damaged one raises ValueError naming the file."""
    out_dir = Path(out_dir)
    folder = next((d for d in (out_dir / NAME, out_dir / f"{NAME}.old") if (d / "state.json").is_file()), None)
    if folder is None:
        return None
    state = read_json(folder / "state.json", "checkpoint state")
    if state.get("format") != FORMAT:
        raise ValueError(f"{folder} is not an arscale checkpoint (format {state.get('format')!r})")
    for name, digest in state["files"].items():
        if not (folder / name).is_file() or file_sha256(folder / name) != digest:
            raise ValueError(f"{folder / name} is missing or does not match its checksum; delete {folder} "
                             "to restart the run from the beginning")
    try:
        optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    except Exception as e:  # an unpickling error means the file holds more than plain tensors and numbers
        raise ValueError(f"{folder / 'optimizer.pt'} cannot be loaded safely ({type(e).__name__}); "
                         f"delete {folder} to restart the run") from None
    return Checkpoint(state["step"], state, optimizer, folder)


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


def remove_checkpoint(out_dir: Path) -> None:
    """Called when the run has finished: the final weights are saved and the optimizer state is no longer needed."""
    for suffix in ("", ".old", ".tmp"):
        shutil.rmtree(Path(out_dir) / f"{NAME}{suffix}", ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Flush the files of `folder` to disk before it is renamed into place (a power cut then loses nothing)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
