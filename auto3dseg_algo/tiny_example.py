"""The whole MSD tumour pipeline on a tiny look-alike of Task03_Liver, on the CPU, in minutes.

    python auto3dseg_algo/tiny_example.py --output-dir runs/tiny                  # baseline mode
    python auto3dseg_algo/tiny_example.py --output-dir runs/tiny --ct-fm-weights ct_fm_feature_extractor

Writes <output-dir>/Task03_Liver (CT-like body phantoms with label 1 liver and 2 a spherical tumour,
in the published MSD layout), converts it with ``ctfm convert-msd``, runs AutoRunner with this folder's
template (one fold, --epochs epochs, 32^3 patches) and evaluates the ensemble's predictions with
``ctfm evaluate-tumour``. The numbers mean nothing after one epoch; the point is that every step runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ctfm.data.phantoms import make_body_phantom
from ctfm.registry import totalsegmentator_ids

TEMPLATES = Path(__file__).resolve().parent
ALGO = "ctfmsegresnet"
MSD_LIVER_LABELS = {"0": "background", "1": "liver", "2": "cancer"}
TUMOUR_CONTRAST_HU = -50  # hypodense, like most liver metastases
TINY = {"roi_size": [32, 32, 32], "overlap": 0.25, "num_workers": 0, "cache_rate": 1.0}


def write_msd_like_task(root: str | Path, num: int = 4, seed: int = 0, spacing=(3.0, 3.0, 3.0)) -> Path:
    """A tiny ``Task03_Liver`` look-alike: body phantoms with label 1 liver and 2 a spherical tumour in it.

    Cases keep the phantoms' random orientations; the layout is the published one (dataset.json,
    imagesTr/, labelsTr/), with a macOS ``._`` file in imagesTr/ as the real archives have.
    """
    task = Path(root) / "Task03_Liver"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    liver_id = totalsegmentator_ids()["liver"]
    training = []
    for i in range(num):
        ph = make_body_phantom(seed + i, fov="abdomen", spacing=spacing)
        liver = ph.label == liver_id
        depth = ndimage.distance_transform_edt(liver)
        centre = np.unravel_index(np.argmax(depth), liver.shape)  # the deepest point of the liver
        radius = max(1.5, min(3.5, depth[centre] - 1))
        tumour = liver & (sum((g - c) ** 2 for g, c in zip(np.indices(liver.shape), centre)) <= radius**2)
        ph.image[tumour] += TUMOUR_CONTRAST_HU
        ph.label = (liver.astype(np.uint8) + tumour.astype(np.uint8)).astype(np.uint8)
        name = f"liver_{i}.nii.gz"
        nib.save(ph.to_nifti("image"), task / "imagesTr" / name)
        nib.save(ph.to_nifti("label"), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (task / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    meta = {"name": "Liver", "modality": {"0": "CT"}, "labels": MSD_LIVER_LABELS, "numTraining": num,
            "training": training, "test": []}
    (task / "dataset.json").write_text(json.dumps(meta, indent=1))
    return task


def run(output_dir: Path, ct_fm_weights: Path | None = None, epochs: int = 1, num: int = 4) -> dict:
    from ctfm.datasets.msd import convert_msd
    from ctfm.evaluation.tumour import evaluate_tumour
    from monai.apps.auto3dseg import AutoRunner

    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; give a new --output-dir.")
    task = write_msd_like_task(output_dir, num=num)
    datalist = convert_msd(task, num_folds=num - 1, test_fraction=1 / num)  # one testing case, one per fold
    mode = "ct_fm" if ct_fm_weights else "baseline"
    class_names = json.loads(datalist.read_text())["class_names"]  # liver and cancer: the authors' classes
    settings = {"modality": "ct", "dataroot": str(task), "datalist": str(datalist), "class_names": class_names, **TINY}
    if ct_fm_weights:
        settings["ct_fm_weights"] = str(ct_fm_weights)
    work = output_dir / mode
    runner = AutoRunner(work_dir=str(work), input=settings, algos=ALGO, templates_path_or_url=str(TEMPLATES))
    runner.set_num_fold(1)
    runner.set_device_info(cmd_prefix=sys.executable)  # training runs in a subprocess: use this Python
    runner.set_training_params({"num_epochs": epochs, "num_epochs_per_validation": 1})
    runner.run()
    return evaluate_tumour(datalist, work / "ensemble_output", work / "eval", run_name=mode)  # scores label 2


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True, help="a new folder for data, run and evaluation")
    parser.add_argument("--ct-fm-weights", type=Path, default=None, help="CT-FM weights: CT-FM mode (default: baseline)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default: 1)")
    args = parser.parse_args()
    summary = run(args.output_dir, args.ct_fm_weights, args.epochs)
    print(json.dumps({k: summary[k] for k in ("run", "n_cases", "dice", "asd_mm", "empty_prediction")}, indent=2))
