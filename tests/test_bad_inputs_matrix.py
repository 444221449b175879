"""Every bad kind of input through every entry point where it applies: the run fails (non-zero exit) and
its last lines name the file and the problem (docs/input_checks.md).

Entry points: ``ctfm embed``, ``ctfm search`` and ``ctfm prepare-pretraining`` (in-process, as
test_input_checks.py runs ``embed``: a subprocess per case costs ~8 s of CPU), and the bundles through
``python -m monai.bundle run``: segmentation inference and training, triage inference. The volume kinds
go through each bundle inference and, as the image of a training datalist, through segmentation training;
segmentation training also runs the datalist kinds, a label out of the class map and non-CT-FM weights. A bundle's
message may span lines (the weights diagnosis): its last lines are what follows "The run failed; the
full traceback is in <log>".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runner import BUNDLES, run_bundle, use_bundle_scripts
from test_input_checks import SHAPE, _write, bad, defects, mr_float, weights  # noqa: F401 - shared fixtures

from ctfm.cli.main import main
from ctfm.data.phantoms import make_body_phantom
from ctfm.networks import build_encoder
from ctfm.weights import save_pretrained

pytestmark = pytest.mark.slow

VOLUME_KINDS = ["nan_block", "all_nan", "inf", "mr_float", "two_d", "four_d", "truncated", "empty_folder",
                "folder_without_images"]
FOLDER_PROBLEM = r"no DICOM file|without a DICOM file"
SEGMENTATION_INFERENCE = TRIAGE_INFERENCE = VOLUME_KINDS
TRAINING_KINDS = [*VOLUME_KINDS, "bad_datalist_json", "missing_datalist_paths", "label_out_of_range",
                  "non_ct_fm_weights"]


@pytest.fixture(scope="module")
def cases(bad, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Bad kind -> (the path a user passes, a regex of the problem its error must state)."""
    root = tmp_path_factory.mktemp("matrix")
    (root / "empty").mkdir()
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("not a scan")
    (root / "no_images" / "table.csv").write_text("a,b\n1,2\n")
    ph = make_body_phantom(seed=3, shape=SHAPE, fov="thorax")
    image = _write(root / "ct.nii.gz", ph.image.astype(np.float32), ph)
    label = _write(root / "ct_seg.nii.gz", ph.label, ph)
    out_of_range = ph.label.copy()
    out_of_range[0, 0, :3] = 200
    label_200 = _write(root / "ct_seg_200.nii.gz", out_of_range, ph)
    (root / "bad.json").write_text('{"training": [{"image": "ct.nii.gz", "label": "ct_seg.nii.gz"}\n {"image": "x"}]}')
    (root / "missing.json").write_text(json.dumps({
        "training": [{"image": "images/ct.nii.gz", "label": "ct_seg.nii.gz"}],
        "validation": [{"image": "ct.nii.gz", "label": "ct_seg.nii.gz"}]}))

    def datalist(name, entry):
        (root / name).write_text(json.dumps({"training": [entry], "validation": [entry], "testing": [entry]}))
        return str(root / name)

    other = save_pretrained(build_encoder(init_filters=8), root / "not_ct_fm")
    volumes = {**bad, "empty_folder": (str(root / "empty"), r"an empty folder|it is empty"),
               "folder_without_images": (str(root / "no_images"), FOLDER_PROBLEM)}
    return {
        **volumes,
        "bad_datalist_json": (str(root / "bad.json"), r"not valid JSON at line 2, column 2"),
        "missing_datalist_paths": (str(root / "missing.json"), r"do not exist: training\[0\] image 'images/ct.nii.gz'"),
        "label_out_of_range": (label_200, r"outside the class map .*: 200"),
        "non_ct_fm_weights": (str(other), r"init_filters (is )?8"),
        "good_image": (image, ""),
        "dir": (str(root), ""),
        # The training datalist of each bad kind that is a file named in one (the others name the datalist).
        "training_datalist": {
            "label_out_of_range": datalist("label_200.json", {"image": image, "label": label_200}),
            "non_ct_fm_weights": datalist("good.json", {"image": image, "label": label}),
            # a bad image in a training datalist, beside a good label
            **{kind: datalist(f"{kind}.json", {"image": volumes[kind][0], "label": label}) for kind in VOLUME_KINDS},
        },
    }


def assert_names_file_and_problem(text: str, path: str, problem: str) -> None:
    assert path in text and re.search(problem, text, re.S), text


def last_cli_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def bundle_message(proc, output_dir: Path, tmp_path: Path) -> str:
    """What a failed bundle run ends with: everything after MONAI's output (the hook's last lines)."""
    assert proc.returncode != 0
    said = proc.stderr.strip()
    assert "The run failed; the full traceback is in" in said, said[-3000:]
    log, message = said.rsplit("The run failed; the full traceback is in ", 1)[1].split("\n", 1)
    assert "Traceback" in open(log).read()  # the traceback went to the run's log, not the terminal
    # in the run's output folder where it exists, else in the temporary folder ($TMPDIR: the test's tmp_path)
    assert Path(log).parent == (output_dir if output_dir.is_dir() else tmp_path), log
    assert "Traceback" not in proc.stderr + proc.stdout
    return message


# --- The ctfm commands ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*VOLUME_KINDS, "bad_datalist_json", "missing_datalist_paths", "non_ct_fm_weights"])
def test_embed(cases, weights, kind, tmp_path, capsys):
    path, problem = cases[kind]
    args = ["embed", "--weights", str(weights), "--output-dir", str(tmp_path / "e"), cases["good_image"][0]]
    if kind in VOLUME_KINDS:
        args[-1] = path
    elif kind == "non_ct_fm_weights":
        args[2] = path
    else:
        args[-1:] = ["--datalist", path, "--dataset-dir", cases["dir"][0]]
    assert main(args) == 1
    assert_names_file_and_problem(last_cli_line(capsys), path, problem)


@pytest.mark.parametrize("kind", [*VOLUME_KINDS, "non_ct_fm_weights"])
def test_search(cases, weights, kind, tmp_path, capsys):
    path, problem = cases[kind]
    good = cases["good_image"][0]
    source, weights_path = (good, path) if kind == "non_ct_fm_weights" else (path, str(weights))
    args = ["search", "--weights", weights_path, "--source", source, "--point", "10", "12", "14",
            "--box", "8", "16", "16", "--output-dir", str(tmp_path / "s"), good]
    assert main(args) == 1
    assert_names_file_and_problem(last_cli_line(capsys), path, problem)


# prepare-pretraining's quality filter (the paper's selection of 148k series) drops 2-D, 4-D and folders
# without DICOM as "filtered", with the reason in its manifest and exit 0: they are selected out, not failed.
PREPARE_KINDS = ["nan_block", "all_nan", "inf", "mr_float", "truncated", "bad_datalist_json"]


@pytest.mark.parametrize("kind", PREPARE_KINDS)
def test_prepare_pretraining(cases, kind, tmp_path, capsys):
    path, problem = cases[kind]
    given = ["--list", path] if kind == "bad_datalist_json" else [path]
    assert main(["prepare-pretraining", "--output-dir", str(tmp_path / "c"), "--workers", "1", "--min-slices", "3",
                 *given]) == 1
    assert_names_file_and_problem(last_cli_line(capsys), path, problem)


# --- The bundles, as a user runs them ------------------------------------------------------------


@pytest.mark.parametrize("kind", SEGMENTATION_INFERENCE)
def test_segmentation_inference(cases, kind, tmp_path):
    path, problem = cases[kind]
    proc = run_bundle(BUNDLES / "ct_fm_segmentation", "inference.json", {
        "input": path, "ckpt_path": "", "output_dir": str(tmp_path / "out"), "patch_size": [32, 32, 32]}, check=False)
    assert_names_file_and_problem(bundle_message(proc, tmp_path / "out", tmp_path), path, problem)


@pytest.fixture(scope="module")
def triage_model(tmp_path_factory):
    """A tiny, untrained triage classifier saved as a bundle model.pt (the checks run before it predicts)."""
    bundle = BUNDLES / "ct_fm_triage"
    use_bundle_scripts(bundle)
    from scripts.network import TriageClassifier
    from scripts.transforms import num_input_channels

    path = tmp_path_factory.mktemp("triage") / "model.pt"
    net = TriageClassifier(in_channels=num_input_channels("channels"), init_filters=4)
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize("kind", TRIAGE_INFERENCE)
def test_triage_inference(cases, triage_model, kind, tmp_path):
    path, problem = cases[kind]
    proc = run_bundle(BUNDLES / "ct_fm_triage", "inference.json", {
        "input": path, "ckpt_path": str(triage_model), "output_dir": str(tmp_path / "out"), "spacing": [4, 4, 4],
        "spatial_size": [12, 16, 16], "init_filters": 4, "window_layout": "channels", "num_workers": 0,
    }, check=False)
    assert_names_file_and_problem(bundle_message(proc, tmp_path / "out", tmp_path), path, problem)


@pytest.mark.parametrize("kind", TRAINING_KINDS)
def test_segmentation_training(cases, kind, tmp_path):
    path, problem = cases[kind]
    datalist = cases["training_datalist"].get(kind, path)
    run = {"patch_size": [32, 32, 32], "spacing": [4, 4, 4], "num_workers": 0, "epochs": 1,
           "dataset_dir": cases["dir"][0], "datalist": datalist, "output_dir": str(tmp_path / "run")}
    if kind == "non_ct_fm_weights":
        run["ct_fm_weights"] = path
    proc = run_bundle(BUNDLES / "ct_fm_segmentation", "train.json", run, check=False)
    assert_names_file_and_problem(bundle_message(proc, tmp_path / "run", tmp_path), path, problem)
    assert not (tmp_path / "run" / "models" / "model.pt").exists()


# --- The pieces of a failed run's last lines ----------------------------------------------------


def test_an_error_raised_in_a_dataloader_worker_keeps_our_message(bad):
    """A worker re-raises MONAI's wrapper with the worker's whole traceback as its text: our message is found in it."""
    from monai.data import DataLoader, Dataset

    from ctfm.bundle_errors import failure_message
    from ctfm.validation import LoadCTd

    path, problem = bad["nan_block"]
    loader = DataLoader(Dataset([{"image": path}], transform=LoadCTd("image")), num_workers=1)
    with pytest.raises(RuntimeError) as err:
        next(iter(loader))
    message = failure_message(err.value)
    assert message.startswith("CTInputError: ") and "Traceback" not in message
    assert_names_file_and_problem(message, path, problem)


def test_root_cause_without_an_error_of_ours_is_the_first_that_is_not_monais_wrapper():
    from ctfm.io import root_cause

    try:
        try:
            raise IndexError("index 200 is out of bounds")
        except IndexError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from inner
    except RuntimeError as outer:
        assert str(root_cause(outer)) == "index 200 is out of bounds"
