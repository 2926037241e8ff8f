"""A training run's files: resumable checkpoints and loss curves.

``save_checkpoint`` writes the trainable (adapter) tensors and the optimizer state as
safetensors and everything else (step, scheduler, history) as JSON, never pickle, and
swaps the folder in atomically by rename; ``load_checkpoint`` restores them into a
model and optimizer built the same way. ``write_curves`` writes the train/eval loss
history as ``curves.json`` and ``curves.png``.

It does not know how the model, optimizer or scheduler are built, the dataset, the
gate or the registry: ``teacher.train.lora`` decides what to save and when.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shared.errors import TrainingError


def trainable_params(model) -> dict:
    """The parameters that train (the adapter's), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    """Adapter + optimizer tensors as safetensors, the rest as JSON; atomic by rename."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = trainable_params(model)
    save_file(
        {n: p.detach().contiguous().cpu() for n, p in params.items()}, tmp / "adapter.safetensors"
    )
    opt = {}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            opt[f"{name}::{key}"] = value.detach().reshape(value.shape).contiguous().cpu()
    save_file(opt, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder: Path, model, optimizer) -> dict:
    import torch
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        raise TrainingError(f"{folder}: no checkpoint to resume from")
    params = trainable_params(model)
    weights = load_file(folder / "adapter.safetensors")
    missing = set(params) - set(weights)
    if missing:
        raise TrainingError(f"{folder}: checkpoint lacks {len(missing)} adapter tensors")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    for key, value in load_file(folder / "optimizer.safetensors").items():
        name, slot = key.split("::")
        p = params[name]
        optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    return json.loads((folder / "state.json").read_text())


# ---------------------------------------------------------------- curves
def write_curves(run_dir: Path, history: dict) -> None:
    (run_dir / "curves.json").write_text(json.dumps(history, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history["train"]:
        steps, losses = zip(*history["train"], strict=True)
        ax.plot(steps, losses, label="train (answer tokens)", alpha=0.7)
    if history["eval"]:
        steps, losses = zip(*history["eval"], strict=True)
        ax.plot(steps, losses, "o-", label="eval (frozen split)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
