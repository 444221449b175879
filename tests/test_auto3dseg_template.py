"""The ctfmsegresnet Auto3DSeg template: AutoRunner end to end, offline, in both modes, on a tiny MSD look-alike.

One baseline run (MONAI's own CLI, ``python -m monai.apps.auto3dseg AutoRunner run --input=<yaml>``) and
one CT-FM run (the Python API, sharing the baseline's data analysis) are made once per module; the
tests read what they wrote. Four 3 mm phantoms, one fold, one epoch, 32^3 patches, CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from ctfm.datasets.msd import convert_msd

from ctfm.networks import build_encoder
from ctfm.weights import WeightLoadError, read_state_dict, save_pretrained

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "auto3dseg_algo"
sys.path[:0] = [str(TEMPLATES), str(TEMPLATES / "ctfmsegresnet" / "scripts")]
from ctfm_segmenter import Segmenter, array_order, load_config
from tiny_example import ALGO, TINY, write_msd_like_task

FOLD = f"{ALGO}_0"


# --- fixtures: one tiny dataset, one pair of runs ------------------------------------------------


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("auto3dseg")
    task = write_msd_like_task(root, num=4, spacing=(3.0, 3.0, 3.0))
    datalist = convert_msd(task, num_folds=3, test_fraction=0.25)  # 3 training cases in 3 folds, 1 testing
    class_names = json.loads(datalist.read_text())["class_names"]  # background / liver / cancer, as the authors
    return {"root": root, "task": task, "datalist": datalist,
            "input": {"modality": "ct", "dataroot": str(task), "datalist": str(datalist), "class_names": class_names, **TINY}}


@pytest.fixture(scope="module")
def weights(msd) -> Path:
    """Random CT-FM-format weights whose BatchNorm statistics no fresh network has."""
    torch.manual_seed(1)
    encoder = build_encoder()
    for name, buffer in encoder.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-1, 1)
    return save_pretrained(encoder, msd["root"] / "ct_fm_RANDOM_INIT")


@pytest.fixture(scope="module")
def baseline_run(msd) -> Path:
    """Baseline mode through MONAI's CLI; every setting in the input YAML."""
    work = msd["root"] / "baseline"
    settings = {**msd["input"], "work_dir": str(work), "algos": ALGO, "templates_path_or_url": str(TEMPLATES),
                "num_fold": 1, "num_epochs": 1, "num_epochs_per_validation": 1}
    input_yaml = msd["root"] / "baseline.yaml"
    input_yaml.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "CMD_PREFIX": sys.executable, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "monai.apps.auto3dseg", "AutoRunner", "run", f"--input={input_yaml}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work


def _shared_analysis(baseline: Path, work: Path) -> None:
    work.mkdir()
    shutil.copy(baseline / "datastats.yaml", work / "datastats.yaml")


@pytest.fixture(scope="module")
def ct_fm_run(msd, weights, baseline_run) -> Path:
    """CT-FM mode through the Python API: ct_fm_weights in the input dict, scalars as training params."""
    from monai.apps.auto3dseg import AutoRunner

    work = msd["root"] / "ct_fm"
    _shared_analysis(baseline_run, work)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "2")
        runner = AutoRunner(work_dir=str(work), input={**msd["input"], "ct_fm_weights": str(weights)}, algos=ALGO,
                            templates_path_or_url=str(TEMPLATES), analyze=False)
        runner.set_num_fold(1)
        runner.set_device_info(cmd_prefix=sys.executable)
        runner.set_training_params({"num_epochs": 1, "num_epochs_per_validation": 1})
        runner.run()
    return work


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["baseline", "ct_fm"])
def test_autorunner_writes_model_progress_and_predictions_on_the_image_grid(mode, msd, request):
    work = request.getfixturevalue(f"{mode}_run")
    model = work / FOLD / "model"
    assert (model / "model.pt").is_file() and (model / "model_last.pt").is_file()
    progress = yaml.safe_load((model / "progress.yaml").read_text())
    assert 0.0 <= progress[-1]["best_avg_dice_score"] <= 1.0 and progress[-1]["epoch"] == 1
    assert "epoch 1/1" in (model / "training.log").read_text()
    testing = json.loads(msd["datalist"].read_text())["testing"]
    for case in testing:
        image = nib.load(msd["task"] / case["image"])
        name = Path(case["image"]).name.split(".")[0]
        pred = nib.load(work / "ensemble_output" / "imagesTr" / f"{name}_ensemble.nii.gz")
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}  # background, liver, tumour


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, lr, norm, orientation, intensity",
    [("baseline", 2.0e-4, "instance", "RAS", "range"), ("ct_fm", 5.0e-4, "batch", "SPL", "ct_fm")],
)
def test_each_mode_trains_with_its_own_settings(mode, lr, norm, orientation, intensity, request):
    model = request.getfixturevalue(f"{mode}_run") / FOLD / "model"
    last = torch.load(model / "model_last.pt", map_location="cpu", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(lr)
    best = torch.load(model / "model.pt", map_location="cpu", weights_only=True)
    config = best["config"]
    assert (config["mode"], config["norm"], config["orientation"], config["intensity"]) == (mode, norm, orientation, intensity)
    has_running_stats = any(k.endswith("running_mean") for k in best["state_dict"])
    assert has_running_stats == (norm == "batch")


@pytest.mark.slow
def test_generated_config_holds_analysis_and_input_values_and_keeps_comments(ct_fm_run, weights):
    path = ct_fm_run / FOLD / "configs" / "hyper_parameters.yaml"
    text = path.read_text()
    config = yaml.safe_load(text)
    assert config["resample_resolution"] == [3.0, 3.0, 3.0]  # the median spacing of the data analysis
    assert config["roi_size"] == [32, 32, 32] and config["class_names"] == ["liver", "cancer"]  # lists from the input
    assert config["output_classes"] == 3 and config["ct_fm_weights"] == str(weights)
    assert config["num_epochs"] == 1250  # the stock rule for 3 cases; training params stay command-line only
    assert "# null: 5.0e-4 CT-FM" in text and "# (filled) mm, RAS order" in text


@pytest.mark.slow
def test_ct_fm_start_up_loads_the_encoder_and_the_fine_tuning_rate(ct_fm_run, weights, tmp_path):
    config = ct_fm_run / FOLD / "configs" / "hyper_parameters.yaml"
    segmenter = Segmenter(str(config), {"ckpt_path": str(tmp_path)})  # a fresh run: nothing to resume
    optimizer, _, _, first_epoch, _ = segmenter.prepare_training()
    expected = read_state_dict(weights)
    encoder = segmenter.network.encoder.state_dict()
    assert set(encoder) == set(expected) and first_epoch == 0
    assert all(torch.equal(encoder[k], expected[k]) for k in expected)
    assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["initial_lr"] * 0.1  # warm-up start
    assert optimizer.param_groups[0]["initial_lr"] == 5.0e-4


@pytest.mark.slow
def test_a_rerun_resumes_from_the_last_checkpoint(ct_fm_run):
    config = ct_fm_run / FOLD / "configs" / "hyper_parameters.yaml"
    progress = yaml.safe_load((ct_fm_run / FOLD / "model" / "progress.yaml").read_text())
    _, _, _, first_epoch, best = Segmenter(str(config)).prepare_training()
    assert first_epoch == 1 and best == pytest.approx(progress[-1]["best_avg_dice_score"])


@pytest.mark.slow
def test_infer_script_writes_the_label_maps_the_ensemble_wrote(baseline_run, msd):
    fold = baseline_run / FOLD
    cmd = [sys.executable, str(fold / "scripts" / "infer.py"), "run", f"--config_file={fold / 'configs' / 'hyper_parameters.yaml'}"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    for case in json.loads(msd["datalist"].read_text())["testing"]:
        name = Path(case["image"]).name.split(".")[0]
        ours = nib.load(fold / "prediction_testing" / f"{name}_seg.nii.gz")
        ensemble = nib.load(baseline_run / "ensemble_output" / "imagesTr" / f"{name}_ensemble.nii.gz")
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ensemble.dataobj))  # one fold: same model
        np.testing.assert_allclose(ours.affine, ensemble.affine, atol=1e-4)


@pytest.mark.slow
def test_wrong_shape_weights_stop_before_training_with_a_clear_message(msd, baseline_run, tmp_path):
    from monai.apps.auto3dseg import AutoRunner

    bad = save_pretrained(build_encoder(init_filters=16), tmp_path / "other_encoder")
    work = tmp_path / "work"
    _shared_analysis(baseline_run, work)
    runner = AutoRunner(work_dir=str(work), input={**msd["input"], "ct_fm_weights": str(bad)}, algos=ALGO,
                        templates_path_or_url=str(TEMPLATES), analyze=False, ensemble=False)
    with pytest.raises(WeightLoadError, match=r"(?s)does not fit the CT-FM encoder.*mis-shaped.*init_filters is 16"):
        runner.run()
    assert not (work / FOLD / "model").exists()


# --- configuration rules (fast) ------------------------------------------------------------------

FILLED = {"output_classes": 2, "roi_size": [32, 32, 48], "resample_resolution": [1.0, 1.0, 3.0],
          "intensity_bounds": [-100.0, 400.0], "bundle_root": "/tmp/fold"}
TEMPLATE_CONFIG = str(TEMPLATES / ALGO / "configs" / "hyper_parameters.yaml")


def test_mode_defaults_fill_only_unset_keys():
    baseline = load_config(TEMPLATE_CONFIG, FILLED)
    assert (baseline["mode"], baseline["learning_rate"], baseline["orientation"]) == ("baseline", 2.0e-4, "RAS")
    ct_fm = load_config(TEMPLATE_CONFIG, {**FILLED, "ct_fm_weights": "/w"})
    assert (ct_fm["mode"], ct_fm["learning_rate"], ct_fm["norm"], ct_fm["intensity"]) == ("ct_fm", 5.0e-4, "batch", "ct_fm")
    assert load_config(TEMPLATE_CONFIG, {**FILLED, "ct_fm_weights": "/w", "learning_rate": 1e-4})["learning_rate"] == 1e-4
    # RAS-ordered lists become SPL array order: the 3 mm slice axis comes first.
    assert array_order(ct_fm["resample_resolution"], ct_fm["orientation"]) == [3.0, 1.0, 1.0]
    assert array_order(ct_fm["roi_size"], "SPL") == [48, 32, 32] and array_order([1, 2, 3], "LPS") == [1, 2, 3]


def test_a_typo_or_a_list_as_text_is_a_clear_error():
    with pytest.raises(KeyError, match="'learnig_rate' is not a ctfmsegresnet hyper-parameter"):
        load_config(TEMPLATE_CONFIG, {**FILLED, "learnig_rate": 1e-4})
    # What AutoRunner.set_training_params makes of a list: text.
    with pytest.raises(ValueError, match="put them in the AutoRunner input dict"):
        load_config(TEMPLATE_CONFIG, {**FILLED, "roi_size": "32,32,32"})
    with pytest.raises(ValueError, match="multiple of 16"):
        load_config(TEMPLATE_CONFIG, {**FILLED, "roi_size": [32, 32, 40]})
    with pytest.raises(ValueError, match="Run it through AutoRunner"):
        load_config(TEMPLATE_CONFIG)
