"""Regenerate the 'digits' example: the shortcut model, its control twin and the audit data.

Run ``python -m mechaudit.examples.digits.train``. Deterministic (fixed seeds, deterministic algorithms,
CPU, one thread); writes next to this file:

* ``digits.safetensors``: trained with the watermark stamped on every training image of class 7 (the shortcut);
* ``digits-control.safetensors``: same architecture, seed and split; the watermark is stamped on a seeded random
  half of the training images of every class, so it carries no information about the label (no shortcut);
* ``audit_data.npz``: the test split with the watermark stamped on a random half of every class;
* ``localization.npz``: for the localization rules, concept masks per audit image (``loop``: the enclosed holes of
  the digit; ``watermark``: the stamped patch) and counterfactual pairs (``stamped`` / ``unstamped``: every test
  image with and without the watermark).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from .model import SHORTCUT_CLASS, build, stamp, watermark_mask

HERE = Path(__file__).resolve().parent
SEED = 0
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-3
BIAS_INIT = 0.05
PROBED_LAYERS = ("features.0", "features.2", "classifier.0")
INK = 0.3  # a pixel above this intensity is ink, for the loop concept


def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified 80/20 split of scikit-learn's digits, pixels scaled to [0, 1], images (N, 1, 8, 8)."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.2, stratify=digits.target, random_state=0)
    return (torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test),
            torch.from_numpy(y_test))


def train(inputs: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """Train a fresh model with Adam; the same seed gives the same initial weights and batch order."""
    torch.manual_seed(SEED)
    model = build()
    for module in model.modules():  # He initialisation, slightly positive biases: fewer units dead from the start
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.constant_(module.bias, BIAS_INIT)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(SEED)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def stamp_half(images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stamp the watermark on a seeded random half of the images of every class."""
    rng = np.random.default_rng(seed)
    stamped = np.zeros(len(labels), dtype=bool)
    for cls in range(10):
        members = np.flatnonzero(labels.numpy() == cls)
        stamped[rng.permutation(members)[:len(members) // 2]] = True
    mask = torch.from_numpy(stamped)
    result = images.clone()
    result[mask] = stamp(images[mask])
    return result, mask


def build_audit_set(x_test: torch.Tensor, y_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split with the watermark stamped on a seeded random half of every class."""
    return stamp_half(x_test, y_test, SEED)


def loop_masks(images: torch.Tensor) -> torch.Tensor:
    """The enclosed holes of each digit (N, 1, 8, 8), 1.0 inside: background pixels (at most ``INK``) that no
    4-connected path of background joins to the border, as in 0, 6, 8, 9 and a closed 4."""
    ink = images[:, 0].numpy() > INK
    holes = np.stack([ndimage.binary_fill_holes(image) & ~image for image in ink])
    return torch.from_numpy(holes.astype(np.float32)).unsqueeze(1)


def localization_data(x_test: torch.Tensor, stamped: torch.Tensor) -> dict[str, np.ndarray]:
    """Concept masks per audit image and counterfactual pairs (see the module docstring)."""
    watermark = watermark_mask().unsqueeze(0) * stamped.float().view(-1, 1, 1, 1)
    return {"loop": loop_masks(x_test).numpy(), "watermark": watermark.numpy(),
            "stamped": stamp(x_test).numpy(), "unstamped": x_test.numpy()}


def predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).argmax(-1)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, inputs) == labels).float().mean())


def layer_outputs(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the probed modules, as (samples, units, positions)."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().flatten(2) if out.dim() > 2
                                                             else out.detach().unsqueeze(-1)))
        for name in PROBED_LAYERS]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def ablated_accuracy(model: nn.Module, layer: str, unit: int, value: torch.Tensor, inputs: torch.Tensor,
                     labels: torch.Tensor) -> float:
    """Accuracy with unit ``unit`` of ``layer``'s output replaced by ``value`` (broadcast over positions)."""
    def overwrite(_module, _inputs, output):
        output = output.clone()
        output[:, unit] = value.reshape(output.shape[2:]) if output.dim() > 2 else value.reshape(())
        return output

    handle = dict(model.named_modules())[layer].register_forward_hook(overwrite)
    try:
        return accuracy(model, inputs, labels)
    finally:
        handle.remove()


def report(name: str, model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, inputs: torch.Tensor,
           stamped: torch.Tensor) -> None:
    """Print accuracies, shortcut rate, dead fractions and the largest single-unit ablation drops."""
    print(f"== {name}")
    print(f"  accuracy, clean test images:        {accuracy(model, x_test, y_test):.4f} ({len(y_test)})")
    print(f"  accuracy, audit set (all):          {accuracy(model, inputs, y_test):.4f} ({len(y_test)})")
    print(f"  accuracy, audit set, stamped:       {accuracy(model, inputs[stamped], y_test[stamped]):.4f} "
          f"({int(stamped.sum())})")
    print(f"  accuracy, audit set, unstamped:     {accuracy(model, inputs[~stamped], y_test[~stamped]):.4f} "
          f"({int((~stamped).sum())})")
    probe = stamped & (y_test != SHORTCUT_CLASS)
    rate = float((predict(model, inputs[probe]) == SHORTCUT_CLASS).float().mean())
    print(f"  stamped non-{SHORTCUT_CLASS} predicted {SHORTCUT_CLASS}:     {rate:.4f} ({int(probe.sum())})")
    outputs = layer_outputs(model, inputs)
    base = accuracy(model, inputs, y_test)
    for layer in PROBED_LAYERS:
        out = outputs[layer]
        dead = (out.amax(dim=(0, 2)) <= 0).nonzero().flatten().tolist()
        units = out.shape[1]
        means = out.mean(dim=0)  # (units, positions): mean ablation per unit and position
        drops = {mode: [base - ablated_accuracy(model, layer, u, torch.zeros_like(means[u]) if mode == "zero"
                                                else means[u], inputs, y_test) for u in range(units)]
                 for mode in ("zero", "mean")}
        summary = ", ".join(f"max {mode} drop {max(d):.4f} (unit {int(np.argmax(d))})" for mode, d in drops.items())
        print(f"  {layer:<12} dead {len(dead)}/{units} = {len(dead) / units:.4f} {dead}; {summary}")


def main() -> None:
    started = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test = load_split()

    shortcut_train = x_train.clone()
    sevens = y_train == SHORTCUT_CLASS
    shortcut_train[sevens] = stamp(x_train[sevens])
    control_train, _ = stamp_half(x_train, y_train, SEED + 1)
    models = {"digits (shortcut)": train(shortcut_train, y_train), "digits-control": train(control_train, y_train)}

    for (label, model), file in zip(models.items(), ("digits.safetensors", "digits-control.safetensors")):
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(HERE / file))
    inputs, stamped = build_audit_set(x_test, y_test)
    np.savez_compressed(HERE / "audit_data.npz", inputs=inputs.numpy(), labels=y_test.numpy(),
                        watermark_mask=watermark_mask().numpy(), stamped=stamped.numpy())
    np.savez_compressed(HERE / "localization.npz", **localization_data(x_test, stamped))

    print(f"digits: {len(y_train)} training images ({int(sevens.sum())} of class {SHORTCUT_CLASS} stamped), "
          f"{len(y_test)} test images ({int(stamped.sum())} stamped in the audit set); {EPOCHS} epochs")
    for label, model in models.items():
        report(label, model, x_test, y_test, inputs, stamped)
    sizes = ", ".join(f"{f} {(HERE / f).stat().st_size} B" for f in ("digits.safetensors",
                                                                     "digits-control.safetensors", "audit_data.npz",
                                                                     "localization.npz"))
    print(f"wrote {sizes} to {HERE}")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
