"""Rank pretraining checkpoints by segmentation Dice with a frozen encoder, by one of two recipes.

For every exported encoder (the ``encoders/iteration_*`` folders a ``ct_fm_pretrain`` run writes, or any
CT-FM weights), the encoder is frozen inside a MONAI ``SegResNetDS``, the decoder is trained on a small
labelled set, and the Dice on the datalist's "validation" cases is measured. The result is a table
(``checkpoint_dice.csv``) and a plot (``checkpoint_dice.png``) of Dice against training
iteration; the paper recipe's are ``checkpoint_dice_paper.csv`` and ``.png``, so both can stand side by side.
Encoders already in the table (same folder, same weights sha256) are skipped, so a killed run
continues; a rerun with other settings into the same folder, or an encoder folder whose weights
changed since its row was written, is refused unless ``overwrite`` (which starts that recipe's table over).

``recipe="quick"`` (the default) is a cheap proxy, not the authors' way: a depth-1 decoder trained for a
fixed number of steps (``iterations``) on 32 x 96 x 96 crops at 3 x 1 x 1 mm, scored with an overlap-0.25
sliding window. It ranks checkpoints in minutes on a CPU.

``recipe="paper"`` is the authors' probe (``evaluation/scripts/totalseg/checkpoint_selection.sh``: their
TotalSegmentator fine-tuning with the encoder frozen, on a subset): for each encoder the
``ct_fm_segmentation`` bundle trains with ``freeze_encoder`` (SegResNetDS depth 4, 96 x 160 x 160 patches
at 1.5 mm, DiceCE with deep supervision, AdamW 2e-4, warm-up cosine, ``epochs`` epochs, validation every
5 epochs with the 0.625 gaussian sliding window), then its ``evaluate.json`` scores the best model on the
"validation" cases (macro Dice over the structures). Runs go to ``output_dir/paper/<encoder>``; it needs
the bundles folder (``$CTFM_BUNDLES`` or ``bundles``) and, at the paper's size, a GPU.

Labels are class ids (TotalSegmentator v2 by default: 117 classes + background).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

TABLE, PLOT = "checkpoint_dice.csv", "checkpoint_dice.png"  # the quick recipe's (see outputs())
SETTINGS_FILE = "selection_settings.json"  # every setting: one table never mixes Dice of two protocols
COLUMNS = ("encoder", "iteration", "mean_dice", "cases", "weights_sha256")
RECIPES = ("quick", "paper")
PAPER_EPOCHS = 300  # the authors' TotalSegmentator schedule, kept by their selection runs


def outputs(output_dir: Path, recipe: str) -> tuple[Path, Path, Path]:
    """The table, plot and settings file of a recipe: ``checkpoint_dice.*`` (quick), ``checkpoint_dice_paper.*``
    (paper)."""
    names = (TABLE, PLOT, SETTINGS_FILE)
    if recipe == "quick":
        return tuple(output_dir / n for n in names)
    return tuple(output_dir / f"{Path(n).stem}_{recipe}{Path(n).suffix}" for n in names)


def find_encoders(paths) -> list[Path]:
    """Released-format folders: each path itself, or every sub-folder of it holding a ``config.json``."""
    found = []
    for path in map(Path, paths):
        if (path / "config.json").is_file() or path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / "config.json").is_file())
    if not found:
        raise FileNotFoundError(f"no CT-FM encoders (folders with config.json + model.safetensors) in {list(map(str, paths))}")
    return found


def _iteration(path: Path) -> int | None:
    match = re.search(r"iteration[_=]?(\d+)", path.name)
    return int(match.group(1)) if match else None


def select_checkpoints(
    encoders,
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    iterations: int = 500,
    patch_size=(32, 96, 96),
    num_classes: int = 118,
    batch_size: int = 2,
    learning_rate: float = 1e-3,
    device: str = "cpu",
    seed: int = 0,
    inference_roi=None,
    overwrite: bool = False,
    recipe: str = "quick",
    epochs: int = PAPER_EPOCHS,
    bundle_overrides: dict | None = None,
    bundles: str | os.PathLike | None = None,
) -> Path:
    """Train a decoder on each frozen encoder and write the Dice table and plot; returns the table.

    ``iterations``, ``patch_size``, ``batch_size``, ``learning_rate``, ``inference_roi`` shape the quick
    recipe; ``epochs``, ``bundle_overrides`` (more ids of the segmentation bundle) and ``bundles`` the paper's.
    """
    from monai.data import CacheDataset, DataLoader, load_decathlon_datalist
    from monai.transforms import Compose, RandCropByPosNegLabeld
    from monai.utils import set_determinism
    from tqdm import tqdm

    from ctfm.io import absolute, csv_text, refuse_other_settings, write_text_atomic
    from ctfm.transforms import ct_fm_transforms
    from ctfm.validation import check_files_exist
    from ctfm.weights import weights_sha256

    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {RECIPES}.")
    encoders = find_encoders([encoders] if isinstance(encoders, (str, os.PathLike)) else encoders)
    base = str(dataset_dir or Path(datalist).parent)
    train_items = load_decathlon_datalist(str(datalist), True, "training", base)
    val_items = load_decathlon_datalist(str(datalist), True, "validation", base)
    check_files_exist(train_items + val_items, where=str(datalist))
    out = Path(output_dir)
    table, plot, settings_file = outputs(out, recipe)
    settings = {"recipe": recipe, "datalist": str(absolute(datalist)), "dataset_dir": str(absolute(base))}
    if recipe == "quick":
        settings |= {"iterations": iterations, "patch_size": list(patch_size),
                     "inference_roi": list(inference_roi or patch_size), "num_classes": num_classes,
                     "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed}
    else:
        settings |= {"epochs": epochs, "bundle_overrides": bundle_overrides or {}}
    rows = [] if overwrite else read_table(table)
    if not overwrite:
        refuse_other_settings(settings_file, settings)
    sha = {str(e): weights_sha256(e) for e in encoders}
    changed = [r["encoder"] for r in rows if r["encoder"] in sha and r.get("weights_sha256") != sha[r["encoder"]]]
    if changed:
        raise ValueError(f"{table} holds the Dice of {changed[0]} with other weights than it holds now (its files "
                         "changed since); nothing was written. Pass --overwrite to start the table over, or use a "
                         "new --output-dir.")
    done = {r["encoder"] for r in rows}
    todo = [e for e in encoders if str(e) not in done]
    print(f"{len(encoders)} encoder(s), {len(encoders) - len(todo)} already in {table} ({recipe} recipe)")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_file, json.dumps(settings, indent=2) + "\n")
    write_text_atomic(table, csv_text(COLUMNS, rows))  # overwrite: the earlier rows go now

    if recipe == "quick":
        prep = ct_fm_transforms(label_key="label", min_size=patch_size)  # read once, reused for every encoder
        keys = ["image", "label"]
        train_ds = CacheDataset(
            [{k: d[k] for k in keys} for d in train_items], transform=Compose([prep, RandCropByPosNegLabeld(
                keys, "label", spatial_size=tuple(patch_size), pos=1, neg=0, num_samples=batch_size)]), progress=False)
        val_ds = CacheDataset([{k: d[k] for k in keys} for d in val_items], transform=prep, progress=False)
    for encoder_path in tqdm(todo, desc="checkpoints", unit="encoder"):
        if recipe == "paper":
            dice = paper_probe_dice(encoder_path, datalist, base, out / "paper" / encoder_path.name, epochs,
                                    bundle_overrides, bundles)
        else:
            set_determinism(seed)  # every encoder gets the same crops, initial decoder and order
            loader = DataLoader(train_ds, batch_size=1, shuffle=True, num_workers=0)
            net = _train_decoder(encoder_path, loader, iterations, num_classes, learning_rate, device)
            dice = _evaluate(net, val_ds, inference_roi or patch_size, num_classes, device)
        rows.append({"encoder": str(encoder_path), "iteration": _iteration(encoder_path), "mean_dice": f"{dice:.4f}",
                     "cases": len(val_items), "weights_sha256": sha[str(encoder_path)]})
        write_text_atomic(table, csv_text(COLUMNS, rows))  # after each encoder: a kill loses none, no half row
        print(f"  {encoder_path.name}: mean Dice {dice:.4f}")
    set_determinism(None)
    _plot(read_table(table), plot, recipe)
    return table


def paper_probe_dice(encoder_path, datalist, dataset_dir, run_dir: Path, epochs: int = PAPER_EPOCHS,
                     bundle_overrides: dict | None = None, bundles=None) -> float:
    """The authors' probe of one encoder (see the module docstring): the segmentation bundle's training with the
    encoder frozen, then its evaluation of the best model on the "validation" cases; returns the macro Dice."""
    from ctfm.bundles import bundles_dir, run_bundle

    bundle = bundles_dir(bundles) / "ct_fm_segmentation"
    common = {"datalist": str(datalist), "dataset_dir": str(dataset_dir), **(bundle_overrides or {})}
    train_dir, eval_dir = run_dir / "train", run_dir / "eval"
    run_bundle(bundle, "train.json", {**common, "ct_fm_weights": str(encoder_path), "freeze_encoder": True,
                                      "epochs": epochs, "output_dir": str(train_dir)}, capture=False)
    run_bundle(bundle, ["train.json", "evaluate.json"], {**common, "ckpt_path": str(train_dir / "models" / "model.pt"),
                                                          "eval_split": "validation", "output_dir": str(eval_dir)},
               capture=False)
    return float(json.loads((eval_dir / "summary.json").read_text())["macro_mean_dice"]["mean"])


def _train_decoder(encoder_path, loader, iterations, num_classes, learning_rate, device):
    import torch
    from monai.losses import DiceCELoss

    from ctfm.networks import build_segmentation_network
    from ctfm.weights import load_encoder_weights

    net = build_segmentation_network(out_channels=num_classes, dsdepth=1)
    load_encoder_weights(net, encoder_path)
    net.encoder.requires_grad_(False)  # frozen: only the decoder learns
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    step = 0
    while step < iterations:
        for batch in loader:
            net.train()
            net.encoder.eval()  # BatchNorm keeps the pretrained statistics
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(image), label)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= iterations:
                break
    return net.eval()


def _evaluate(net, dataset, roi_size, num_classes, device) -> float:
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.metrics import DiceMetric

    inferer = SlidingWindowInferer(roi_size=tuple(roi_size), sw_batch_size=2, overlap=0.25)
    metric = DiceMetric(include_background=False, num_classes=num_classes, ignore_empty=True)
    with torch.no_grad():
        for item in dataset:
            logits = inferer(item["image"][None].to(device), net)
            metric(logits.argmax(1, keepdim=True).cpu(), item["label"][None].cpu())
    dice = metric.aggregate()  # mean over cases of the mean over the classes present
    return float(dice)


def read_table(table: Path) -> list[dict]:
    if not table.exists():
        return []
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def _plot(rows: list[dict], path: Path, recipe: str = "quick") -> Path:
    import matplotlib

    from ctfm.io import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (int(r["iteration"]) if r["iteration"] else -1, r["encoder"]))
    labels = [r["iteration"] or Path(r["encoder"]).name for r in rows]
    values = [float(r["mean_dice"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(rows) + 2), 3.5))
    ax.plot(range(len(rows)), values, marker="o")
    best = max(range(len(rows)), key=values.__getitem__)
    ax.annotate(f"best: {labels[best]}", (best, values[best]), textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right")
    ax.set_xlabel("pretraining iteration (encoder)")
    ax.set_ylabel(f"mean Dice, frozen encoder ({recipe} recipe)")
    ax.set_title("Checkpoint selection")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path

