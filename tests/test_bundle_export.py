"""Export and scale: the MONAI model zoo's bundle verification, TorchScript export, multi-GPU evaluation.

The verification runs the steps of the model zoo's ``ci/verify_bundle.py`` in full mode through MONAI's
public API and bundle CLI, on a copy of each bundle with stand-in (random) weights in ``models/model.pt``:
directory, version and changelog, metadata schema, inference properties, network data shape
(``verify_net_in_out`` at the metadata's shapes) and TorchScript export (``ckpt_export``), whose module
must give the eager network's outputs. ``multi_gpu_evaluate.json`` runs under torchrun on two CPU
processes (gloo) and must report what a single process reports on the same data.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import BUNDLES, run_bundle, run_torchrun, use_bundle_scripts, verify_metadata
from monai.bundle import ConfigParser, create_workflow
from monai.data import load_net_with_metadata

pytestmark = pytest.mark.slow

NAMES = ("ct_fm_segmentation", "ct_fm_triage", "ct_fm_pretrain")
# A small input for the TorchScript-equals-eager check, per bundle: (channels, *spatial), divisible by 16.
SMALL_INPUT = {"ct_fm_segmentation": (1, 32, 32, 32), "ct_fm_triage": (1, 32, 32, 32),
               "ct_fm_pretrain": (1, 16, 32, 32)}


def _parser(bundle: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser.read_meta(bundle / "configs" / "metadata.json")
    return parser


@pytest.fixture(params=NAMES)
def stand_in(request, tmp_path) -> Path:
    """A copy of the bundle with stand-in weights: the state dict of its ``network_def``, random values."""
    bundle = tmp_path / request.param
    shutil.copytree(BUNDLES / request.param, bundle, ignore=shutil.ignore_patterns("models", "runs", "__pycache__"))
    use_bundle_scripts(bundle)
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(_parser(bundle).get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_bundle_passes_the_model_zoo_verification(stand_in, tmp_path):
    bundle, meta = stand_in, json.loads((stand_in / "configs" / "metadata.json").read_text())

    # Directory: the files a model-zoo bundle must (metadata, LICENSE) and should (weights, inference) have.
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (bundle / name).is_file(), name

    # Version and changelog: the version is the newest entry of the changelog.
    newest = max(meta["changelog"], key=lambda v: tuple(map(int, v.split("."))))
    assert meta["version"] == newest, (meta["version"], list(meta["changelog"]))

    # Properties: MONAI's required inference properties, on a created and initialised workflow.
    scan = tmp_path / "ct.nii.gz"
    hu = np.random.default_rng(0).uniform(-1000, 1500, (24, 24, 24)).astype(np.int16)
    hu[:4] = -1000  # air, as in every CT
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 2.0, 1.0])), scan)
    workflow = create_workflow(
        workflow_type="inference", config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle), dataset_dir=str(scan),
        ckpt_path=str(bundle / "models" / "model.pt"), output_dir=str(tmp_path / "out"))
    assert workflow.check_properties() == []

    # Data shape: a forward pass at the metadata's input shape gives its output channels and dtype.
    proc = run_bundle(bundle, "inference.json", {"net_id": "network_def", "device": "cpu"},
                      workflow="verify_net_in_out")
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr

    # TorchScript: ckpt_export of the stand-in weights, as the bundle README shows it.
    exported = bundle / "models" / "model.ts"
    run_bundle(bundle, "inference.json", {"net_id": "network_def", "ckpt_file": str(bundle / "models" / "model.pt"),
                                          "filepath": str(exported)}, workflow="ckpt_export")
    scripted, ts_meta, _ = load_net_with_metadata(exported)
    assert ts_meta["version"] == meta["version"]
    eager = _parser(bundle).get_parsed_content("network_def")
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, *SMALL_INPUT[bundle.name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = eager.eval()(x), scripted.eval()(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_valid_against_monai_schema(name, tmp_path):
    """The model zoo's metadata step: ``verify_metadata`` (skips with the reason where the schema is not given)."""
    proc = verify_metadata(BUNDLES / name, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


# --- multi-GPU evaluation ------------------------------------------------------------------------
def _evaluate_both_ways(bundle: Path, overrides: dict, tmp_path: Path) -> tuple[Path, Path]:
    """evaluate.json in one process and multi_gpu_evaluate.json in two (torchrun, gloo): the two output folders."""
    single, sharded = tmp_path / "single", tmp_path / "two_processes"
    run_bundle(bundle, ["train.json", "evaluate.json"], {**overrides, "output_dir": str(single)})
    proc = run_torchrun(bundle, ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
                        {**overrides, "output_dir": str(sharded)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return single, sharded


@pytest.mark.parametrize(("name", "every_rank"), [("ct_fm_segmentation", {"MetricsSaver"}),
                                                 ("ct_fm_triage", {"CheckpointLoader", "TriageReport"})])
def test_only_the_logging_handler_is_rank_zero_only(name, every_rank, monkeypatch):
    """Under torchrun rank 1 drops the StatsHandler (by ``main_process``) and keeps the handlers that load
    weights or gather metrics, which every rank must run."""
    use_bundle_scripts(BUNDLES / name)
    for rank, dropped in (("1", {"StatsHandler"}), ("0", set())):
        monkeypatch.setenv("RANK", rank)
        parser = ConfigParser()
        configs = ("train.json", "evaluate.json", "multi_gpu_evaluate.json")
        parser.read_config([BUNDLES / name / "configs" / c for c in configs])
        parser.get_parsed_content("imports")
        handlers = {h["_target_"].rsplit(".", 1)[-1]: f"validate#handlers#{i}#_disabled_"
                    for i, h in enumerate(parser["validate#handlers"])}
        assert set(handlers) == every_rank | {"StatsHandler"}
        assert {h for h, key in handlers.items() if key in parser and parser.get_parsed_content(key)} == dropped


def test_segmentation_multi_gpu_evaluation_equals_one_process(tmp_path):
    from ctfm.data.phantoms import write_body_phantoms
    from ctfm.networks import build_segmentation_network

    bundle = BUNDLES / "ct_fm_segmentation"
    datalist = write_body_phantoms(tmp_path / "body", num=3, seed=0)
    cases = json.loads(datalist.read_text())
    cases["testing"] = cases["training"] + cases["validation"]  # three cases: shards of 2 and 1
    datalist.write_text(json.dumps(cases))
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(build_segmentation_network(out_channels=118, init_filters=8).state_dict(), model)
    single, sharded = _evaluate_both_ways(bundle, {
        "dataset_dir": str(datalist.parent), "datalist": str(datalist), "ckpt_path": str(model),
        "network_def#init_filters": 8, "patch_size": [32, 32, 32], "spacing": [4, 4, 4], "num_workers": 0,
    }, tmp_path)

    # MetricsSaver writes the ranks' cases rank by rank (0 and 2 from rank 0, then 1): both ranks evaluated.
    raw = [r["filename"] for r in csv.DictReader(open(sharded / "dice_raw.csv"))]
    assert [Path(f).name for f in raw] == ["body_000.nii.gz", "body_002.nii.gz", "body_001.nii.gz"]
    # The report puts them back in the datalist's order: the same files as one process's, intervals included.
    # (Same weights, same inputs, CPU: the two runs' Dice values are equal to the last bit.)
    for name in ("per_structure_dice.csv", "summary.csv"):
        assert (sharded / name).read_text() == (single / name).read_text(), name
    one, two = (json.loads((folder / "summary.json").read_text()) for folder in (single, sharded))
    assert two == one and two["cases"] == 3
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in single.iterdir())


def test_triage_multi_gpu_evaluation_equals_one_process(tmp_path):
    from ctfm.data.phantoms import make_head_phantom

    bundle = BUNDLES / "ct_fm_triage"
    use_bundle_scripts(bundle)
    from scripts.network import TriageClassifier

    (tmp_path / "images").mkdir()
    testing = []
    for seed, bleed in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 1)):  # five cases: shards of 3 and 2
        image = f"images/head_{seed}_{bleed}.nii.gz"
        nib.save(make_head_phantom(seed=seed, bleed=bool(bleed), spacing=(4.0, 4.0, 4.0), bleed_size=2.0)
                 .to_nifti("image"), tmp_path / image)
        testing.append({"image": image, "label": bleed})
    lists = {"training": testing, "validation": testing, "testing": testing}
    (tmp_path / "datalist.json").write_text(json.dumps(lists))
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(TriageClassifier(in_channels=4, init_filters=4).state_dict(), model)
    single, sharded = _evaluate_both_ways(bundle, {
        "dataset_dir": str(tmp_path), "datalist": str(tmp_path / "datalist.json"), "ckpt_path": str(model),
        "n_bootstrap": 200, "spacing": [4.0, 4.0, 4.0], "spatial_size": [12, 16, 16], "init_filters": 4,
        "window_layout": "channels", "num_workers": 0, "amp": False,
    }, tmp_path)

    rows = {folder: list(csv.DictReader(open(folder / "predictions.csv"))) for folder in (single, sharded)}
    assert [r["id"] for r in rows[sharded]] == [r["id"] for r in rows[single]] and len(rows[single]) == 5
    np.testing.assert_allclose([float(r["probability"]) for r in rows[sharded]],
                               [float(r["probability"]) for r in rows[single]], atol=1e-5)
    one, two = (json.loads((folder / "metrics.json").read_text()) for folder in (single, sharded))
    assert two["n"] == 5 and two["n_abnormal"] == 3
    for name in ("auroc", "f1", "accuracy", "sensitivity", "specificity"):
        assert two[name]["value"] == pytest.approx(one[name]["value"], abs=1e-6), name
        assert two[name]["ci95"] == pytest.approx(one[name]["ci95"], abs=1e-6), name
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in single.iterdir())
