"""The bundle contract (README, "The bundle contract"): the three bundles use the same ids, defaults and
library calls for CT-FM weights, resume, inference input and trained weights; multi-GPU overlays
disable rank-0-only handlers by name. Reads the configs; builds nothing heavy."""

from __future__ import annotations

import json
import re

import pytest
from monai.bundle import ConfigParser

from bundle_runner import REPO, use_bundle_scripts
from ctfm.io import list_inputs

BUNDLES = {name: REPO / "bundles" / name for name in ("ct_fm_pretrain", "ct_fm_segmentation", "ct_fm_triage")}

# id -> default, the same in every train.json
TRAIN_CONTRACT = {
    "ct_fm_weights": "",
    "resume": True,
    "resume_from": "$ctfm.training.resume_checkpoint(@output_dir, @resume, @epochs, @run_settings)",
    "main_process": True,
}
LOAD_CT_FM_WEIGHTS = "$ctfm.weights.load_ct_fm_weights(@network, @ct_fm_weights)"
MAIN_PROCESS_UNDER_TORCHRUN = "$int(os.environ['RANK']) == 0"
INFERENCE_IDS = {"input": "@dataset_dir", "output_dir": None, "ckpt_path": None, "overwrite": False}
OLD_IDS = ("image", "ckpt_file", "weights", "encoder_path", "resume_checkpoint", "network_with_ct_fm_weights")

# Handlers that only rank 0 runs under torchrun (they log, or write files), per bundle and list.
RANK_ZERO_ONLY = {
    "ct_fm_pretrain": {"train#handlers": {"StatsHandler", "TensorBoardStatsHandler", "ConsoleProgress"}},
    "ct_fm_segmentation": {
        "train#handlers": {"StatsHandler", "TensorBoardStatsHandler", "TrainingProgress"},
        "train#resume_handlers": {"CheckpointSaver"},
        "validate#handlers": {"StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver"},
    },
    "ct_fm_triage": {
        "train#handlers": {"StatsHandler", "TensorBoardStatsHandler"},
        "train#resume_handlers": {"CheckpointSaver"},
        "validate#handlers": {"StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver", "ThresholdSaver"},
    },
}


def _config(bundle: str, name: str) -> dict:
    return json.loads((BUNDLES[bundle] / "configs" / name).read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_uses_the_contract_ids_defaults_and_library_calls(bundle):
    train, multi_gpu = _config(bundle, "train.json"), _config(bundle, "multi_gpu_train.json")
    assert {k: train.get(k) for k in TRAIN_CONTRACT} == TRAIN_CONTRACT
    assert multi_gpu["main_process"] == MAIN_PROCESS_UNDER_TORCHRUN
    for config in (train, multi_gpu):  # the overlay replaces initialize: it must keep both steps
        assert LOAD_CT_FM_WEIGHTS in config["initialize"] and "$@resume_from" in config["initialize"]
    assert not set(OLD_IDS) & set(train)
    # Handlers are disabled by the named switch, never by list position (which an inserted handler shifts).
    for config in ("train.json", "multi_gpu_train.json", "evaluate.json"):
        positional = [k for k in _config(bundle, config) if re.search(r"#handlers#\d", k)]
        assert not positional, (config, positional)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_weights_are_loaded_only_through_ctfm_weights(bundle):
    """No bundle script loads a state dict itself: CT-FM weights go through ctfm.weights."""
    for script in (BUNDLES[bundle] / "scripts").glob("*.py"):
        text = script.read_text()
        assert ".load_state_dict(" not in text and "torch.load(" not in text, script


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_uses_the_contract_ids(bundle):
    inference = _config(bundle, "inference.json")
    assert set(INFERENCE_IDS) <= set(inference) and inference["input"] == INFERENCE_IDS["input"]
    assert inference["overwrite"] is INFERENCE_IDS["overwrite"] and "@overwrite" in json.dumps(inference)
    assert not set(OLD_IDS) & set(inference)
    assert "@ckpt_path" in json.dumps(inference)  # the trained weights are read from it
    assert "@input" in json.dumps(inference)
    if (BUNDLES[bundle] / "configs" / "evaluate.json").is_file() and bundle != "ct_fm_pretrain":
        evaluate = _config(bundle, "evaluate.json")
        assert evaluate["ckpt_path"] == inference["ckpt_path"] and not set(OLD_IDS) & set(evaluate)
        assert evaluate["overwrite"] is False and "@overwrite" in json.dumps(evaluate)


def _disabled_handlers(bundle: str, tmp_path, insert_first: bool = False) -> dict[str, set[str]]:
    """Parse train.json + multi_gpu_train.json as torchrun would start them; the handlers each list drops."""
    use_bundle_scripts(BUNDLES[bundle])
    parser = ConfigParser()
    parser.read_config([BUNDLES[bundle] / "configs" / c for c in ("train.json", "multi_gpu_train.json")])
    parser["output_dir"] = str(tmp_path)
    if insert_first:  # what MONAI Label's BundleTrainTask does with a pretrained model: a loader at position 0
        parser["train#handlers"] = [{"_target_": "CheckpointLoader", "load_path": "x", "load_dict": {}}]
        parser["train#handlers"] += _config(bundle, "train.json")["train"]["handlers"]
    parser.parse()
    parser.get_parsed_content("imports")
    disabled = {}
    for section in RANK_ZERO_ONLY[bundle]:
        names = set()
        for i, handler in enumerate(parser[section]):
            if handler.get("_disabled_") and parser.get_parsed_content(f"{section}#{i}#_disabled_"):
                names.add(handler["_target_"].rsplit(".", 1)[-1])
        disabled[section] = names - {"CheckpointLoader"}  # the resume loader: off for a new run, on every rank
    return disabled


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_overlay_disables_the_rank_zero_only_handlers_by_name(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # torchrun sets RANK for every process
    assert _disabled_handlers(bundle, tmp_path) == RANK_ZERO_ONLY[bundle]
    assert _disabled_handlers(bundle, tmp_path, insert_first=True) == RANK_ZERO_ONLY[bundle]
    monkeypatch.setenv("RANK", "0")
    assert _disabled_handlers(bundle, tmp_path) == {section: set() for section in RANK_ZERO_ONLY[bundle]}


def test_input_is_a_file_a_dicom_folder_a_folder_of_volumes_or_a_list(tmp_path):
    (tmp_path / "scans" / "series").mkdir(parents=True)
    for name in ("b.nii.gz", "a.nrrd", "notes.txt"):
        (tmp_path / "scans" / name).write_bytes(b"x")
    (tmp_path / "scans" / "series" / "IM0001").write_bytes(bytes(128) + b"DICM")  # DICOM files often lack a suffix
    scans = tmp_path / "scans"
    assert list_inputs(str(scans / "a.nrrd")) == [{"image": str(scans / "a.nrrd")}]
    assert list_inputs(scans) == [{"image": str(scans / n)} for n in ("a.nrrd", "b.nii.gz", "series")]
    assert list_inputs(scans / "series") == [{"image": str(scans / "series")}]  # one DICOM series
    assert list_inputs([str(scans / "b.nii.gz"), str(scans / "series")]) == [
        {"image": str(scans / "b.nii.gz")}, {"image": str(scans / "series")}]
    with pytest.raises(FileNotFoundError, match="missing.nii.gz: no such file or folder"):
        list_inputs(str(tmp_path / "missing.nii.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty folder"):
        list_inputs(tmp_path / "empty")
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("not a scan")
    with pytest.raises(FileNotFoundError, match=r"no_images: a folder with no CT volume .* no DICOM file .*notes.txt"):
        list_inputs(tmp_path / "no_images")
    with pytest.raises(ValueError, match="no input"):
        list_inputs("")


def _contract_table(readme) -> list[str]:
    """The table under the heading "The bundle contract" of a README."""
    text = readme.read_text().split("## The bundle contract", 1)[1]
    lines = text.split("\n## ", 1)[0].splitlines()
    return [line for line in lines if line.startswith("|")]


def test_the_contract_table_is_written_once_and_shown_in_every_bundle_readme():
    table = _contract_table(REPO / "README.md")
    ids = {line.split("`")[1] for line in table[2:]}
    assert ids == {*TRAIN_CONTRACT, *INFERENCE_IDS} - {"resume_from"}
    for bundle in BUNDLES.values():
        assert _contract_table(bundle / "docs" / "README.md") == table, bundle.name


def test_every_path_id_of_the_bundles_is_made_absolute_by_run_bundle():
    """A new path id in a config must join ctfm.bundles.PATH_IDS, or a relative value would resolve in the bundle."""
    from ctfm.bundles import PATH_IDS

    path_like = re.compile(r"(^|_)(dir|path|datalist|weights|root)$|^input$")
    found = set()
    for config in sorted((REPO / "bundles").glob("*/configs/*.json")):
        found |= {k for k in json.loads(config.read_text()) if "#" not in k and path_like.search(k)}
    assert found and found <= PATH_IDS, sorted(found - PATH_IDS)
