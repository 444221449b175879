"""Turn a Medical Segmentation Decathlon CT tumour task into a datalist with a seeded split.

Reads the published layout, TaskXX_Name/dataset.json + imagesTr/ + labelsTr/, of the four tasks of the
paper's tumour experiments: Task03_Liver (1 liver, 2 "cancer"), Task06_Lung (1 "cancer"), Task07_Pancreas
(1 pancreas, 2 "cancer") and Task08_HepaticVessel (1 vessel, 2 "tumour").

``labels="all"`` (the default) keeps the published classes, background / organ / tumour, as the CT-FM
authors trained (their Auto3DSeg runs on the MSD label maps as they are; the tumour is scored): the
datalist points at labelsTr/. ``labels="tumour"`` writes binary maps instead, 1 where the tumour is:

  labelsTumourTr/<case>.nii.gz   (same grid and header as the original label map)

Either way, under ``output_dir`` (default: the task folder itself):

  datalist_tumour.json           "training" (with a "fold" per case, for Auto3DSeg) and "testing" lists,
                                 paths relative to ``output_dir``; "labels", "class_names" (the foreground
                                 names, for AutoRunner's input), "tumour_label" (the value that
                                 ``ctfm evaluate-tumour`` scores), the split's seed and provenance

The MSD test images have no public labels, so the split is made from imagesTr: a seeded ``test_fraction``
of the cases is held out as "testing", the rest is dealt into ``num_folds`` folds. The paper says only that
it used "custom splits for each task" and does not publish them, so the split here cannot be theirs.

With another ``output_dir``, images (and, with all labels, label maps) are linked (symlinks) into
<output-dir>/imagesTr/ (labelsTr/) so that every path stays inside the dataroot. Cases already converted
are kept, so a killed run resumes; an existing datalist is never replaced unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm import __version__
from ctfm.datasets.datalist import refuse_existing, write_datalist
from ctfm.io import atomic_path
from ctfm.validation import check_files_exist

DATALIST = "datalist_tumour.json"
LABEL_DIR = "labelsTumourTr"
LABEL_CHOICES = ("all", "tumour")


@dataclass(frozen=True)
class MSDTask:
    tumour_label: int  # value of the tumour in the task's labelsTr
    tumour_name: str  # its name in the task's dataset.json "labels"


# The four CT tumour tasks of the paper, as published in each task's dataset.json.
TASKS: dict[str, MSDTask] = {
    "Task03_Liver": MSDTask(2, "cancer"),
    "Task06_Lung": MSDTask(1, "cancer"),
    "Task07_Pancreas": MSDTask(2, "cancer"),
    "Task08_HepaticVessel": MSDTask(2, "tumour"),
}


def find_task(task_dir: Path) -> tuple[str, MSDTask]:
    """The task of a folder, by its MSD name (``Task06_Lung``, also ``Task06_Lung_copy``...)."""
    for name, task in TASKS.items():
        if task_dir.name.lower().startswith(name.lower()):
            return name, task
    raise ValueError(
        f"{task_dir}: the folder name does not start with a supported MSD task ({', '.join(TASKS)}). "
        "Point --task-dir at the unpacked TaskXX_Name folder, or rename it to its MSD name."
    )


def read_dataset_json(task_dir: Path, task_name: str, task: MSDTask) -> tuple[list[dict], dict[int, str]]:
    """The training cases and the labels of ``dataset.json``, after checking that the tumour label is where it
    should be."""
    path = task_dir / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: an MSD task folder holds dataset.json, imagesTr/ and labelsTr/.")
    meta = json.loads(path.read_text())
    labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
    found = labels.get(task.tumour_label, "<none>")
    if found.lower() != task.tumour_name:
        raise ValueError(
            f"{path}: label {task.tumour_label} is {found!r}, but {task_name} publishes it as {task.tumour_name!r} "
            f"(labels here: {labels}). This is not the published {task_name}; check the folder."
        )
    # Paths from dataset.json, not a glob: the MSD archives also hold macOS "._" files in imagesTr/.
    cases = [{"image": str(task_dir / c["image"]), "label": str(task_dir / c["label"])} for c in meta["training"]]
    check_files_exist(cases, where=str(path))
    return cases, labels


def seeded_split(names: list[str], seed: int, num_folds: int, test_fraction: float) -> tuple[list[str], dict]:
    """``(testing names, {training name: fold})``: a seeded permutation of the sorted names."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be within [0, 1), got {test_fraction}")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_test = round(test_fraction * len(names))
    train = order[n_test:]
    if len(train) < num_folds:
        raise ValueError(f"{len(train)} training cases cannot make {num_folds} folds; lower --num-folds.")
    return sorted(order[:n_test]), {name: i % num_folds for i, name in enumerate(train)}


def write_tumour_label(source: Path, target: Path, tumour_label: int) -> int:
    """Write the binary tumour map of ``source`` to ``target`` (atomically); returns the tumour voxel count."""
    img = nib.load(str(source))
    tumour = (np.asanyarray(img.dataobj) == tumour_label).astype(np.uint8)
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    out = nib.Nifti1Image(tumour, img.affine, header)
    with atomic_path(target) as tmp:
        nib.save(out, str(tmp))
    return int(tumour.sum())


def convert_msd(
    task_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    seed: int = 0,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    labels: str = "all",
) -> Path:
    """Write ``datalist_tumour.json`` (and, with ``labels="tumour"``, the binary tumour maps) of an MSD task;
    returns the datalist path. ``labels``: ``"all"`` (the published classes, the authors') or ``"tumour"``."""
    task_dir = Path(task_dir).expanduser().resolve()
    output_dir = Path(output_dir).expanduser().resolve() if output_dir else task_dir
    if not task_dir.is_dir():
        raise FileNotFoundError(f"{task_dir}: no such folder. Give the unpacked MSD task, e.g. /data/Task06_Lung.")
    task_name, task = find_task(task_dir)
    if labels not in LABEL_CHOICES:
        raise ValueError(f"labels {labels!r}: expected one of {LABEL_CHOICES}.")
    datalist_path = refuse_existing(output_dir / DATALIST, overwrite)
    cases, published = read_dataset_json(task_dir, task_name, task)
    case_name = {c["image"]: Path(c["image"]).name for c in cases}
    testing, folds = seeded_split(sorted(case_name.values()), seed, num_folds, test_fraction)

    tumour_only = labels == "tumour"
    label_dir = LABEL_DIR if tumour_only else "labelsTr"
    link = output_dir != task_dir  # links keep every path inside the dataroot
    if link:
        (output_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    if link or tumour_only:
        (output_dir / label_dir).mkdir(parents=True, exist_ok=True)
    entries = {}
    for k, case in enumerate(cases, 1):
        name = case_name[case["image"]]
        image = f"imagesTr/{name}"
        label = f"{LABEL_DIR}/{name}" if tumour_only else f"labelsTr/{Path(case['label']).name}"
        if not tumour_only:
            status = "labels as published"
        elif (output_dir / label).exists():  # written atomically by an earlier run
            status = "kept"
        else:
            status = f"{write_tumour_label(Path(case['label']), output_dir / label, task.tumour_label)} tumour voxels"
        for path, source in ((image, case["image"]), (label, case["label"])):
            if link and not (output_dir / path).exists():
                os.symlink(source, output_dir / path)
        entries[name] = {"image": image, "label": label}
        print(f"[{k}/{len(cases)}] {name}: {status}", flush=True)

    if tumour_only:
        classes, tumour_label = {0: "background", 1: task.tumour_name}, 1
        description = f"MSD {task_name}: label {task.tumour_label} ({task.tumour_name}) -> 1, everything else -> 0"
    else:
        classes, tumour_label = published, task.tumour_label
        description = f"MSD {task_name}: the published labels {published}; the tumour is {task.tumour_label}"
    datalist = {
        "name": f"{task_name} tumour",
        "description": description,
        "labels": {str(k): v for k, v in sorted(classes.items())},
        "class_names": [v for k, v in sorted(classes.items()) if k],
        "tumour_label": tumour_label,
        "training": [{**entries[n], "fold": f} for n, f in sorted(folds.items())],
        "testing": [entries[n] for n in testing],
        "split": {"seed": seed, "num_folds": num_folds, "test_fraction": test_fraction,
                  "note": "seeded custom split; the paper's own splits are not published"},
        "provenance": {"source": str(task_dir), "dataset": "Medical Segmentation Decathlon (CC-BY-SA 4.0)",
                       "converter": f"ctfm convert-msd (ctfm {__version__})"},
    }
    return write_datalist(datalist, datalist_path, overwrite)

