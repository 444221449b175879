"""CT-FM weight I/O: the released layout, every load form, strictness and its diagnoses, safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SegResNet
from monai.networks.nets.segresnet_ds import SegResEncoder
from safetensors.torch import load_file, save_file
from torch import nn

from ctfm.networks import CTFMEmbedder, build_encoder, build_segmentation_network, find_encoder
from ctfm.registry import ENCODER_CONFIG, ENCODER_NUM_PARAMETERS, ENCODER_NUM_TENSORS
from ctfm.weights import (
    WeightLoadError,
    check_encoder_weights,
    load_ct_fm_weights,
    load_encoder_weights,
    load_network_weights,
    load_pretrained,
    read_state_dict,
    save_pretrained,
)


def _random_encoder(seed: int = 0, **overrides) -> SegResEncoder:
    """An encoder with every tensor, BatchNorm statistics included, set to seeded random values."""
    torch.manual_seed(seed)
    enc = build_encoder(**overrides)
    with torch.no_grad():
        for name, t in enc.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + (0.5 if name.endswith("running_var") else 0.0))
            else:
                t.fill_(seed + 7)  # num_batches_tracked
    return enc


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def encoder() -> SegResEncoder:
    return _random_encoder(seed=1)


@pytest.fixture(scope="module")
def released(encoder, tmp_path_factory) -> Path:
    return save_pretrained(encoder, tmp_path_factory.mktemp("w") / "ct_fm_feature_extractor")


def test_encoder_topology_is_ct_fm(encoder):
    assert sum(p.numel() for p in encoder.parameters()) == ENCODER_NUM_PARAMETERS
    assert len(encoder.state_dict()) == ENCODER_NUM_TENSORS
    assert CTFMEmbedder(encoder)(torch.rand(2, 1, 16, 32, 32)).shape == (2, 512)


def test_released_layout_matches_the_published_files(released, encoder):
    assert sorted(p.name for p in released.iterdir()) == ["config.json", "model.safetensors"]
    text = (released / "config.json").read_text()
    assert json.loads(text) == ENCODER_CONFIG  # the four keys of ct_fm_feature_extractor/config.json
    assert text == json.dumps(ENCODER_CONFIG, sort_keys=True, indent=2)  # huggingface_hub's formatting
    tensors = load_file(released / "model.safetensors")
    assert len(tensors) == ENCODER_NUM_TENSORS and "conv_init.weight" in tensors
    assert "conv_init.bias" not in tensors  # SegResEncoder convs have no bias
    assert tensors["layers.0.blocks.0.norm1.num_batches_tracked"].dtype == torch.int64
    assert _same_tensors(tensors, encoder.state_dict())


def test_round_trip_is_bit_exact_and_in_eval_mode(released, encoder):
    loaded = load_pretrained(released)
    assert not loaded.training  # BatchNorm must use the stored running statistics
    assert _same_tensors(loaded.state_dict(), encoder.state_dict())


def test_huggingface_mixin_reads_ours_and_writes_what_we_read(released, encoder, tmp_path):
    hub = pytest.importorskip("huggingface_hub")

    class HubSegResEncoder(SegResEncoder, hub.PyTorchModelHubMixin):
        """What lighter_zoo.SegResEncoder is: MONAI's encoder plus the hub mixin."""

    theirs = HubSegResEncoder.from_pretrained(str(released))  # lighter_zoo's loading path
    assert _same_tensors(theirs.state_dict(), encoder.state_dict())

    theirs.save_pretrained(tmp_path / "hub")
    assert (tmp_path / "hub" / "model.safetensors").read_bytes() == (released / "model.safetensors").read_bytes()
    ours = load_pretrained(tmp_path / "hub")  # their config.json also lists every default argument
    assert _same_tensors(ours.state_dict(), encoder.state_dict())


def test_changed_shape_fails_naming_the_key(released, tmp_path):
    tensors = load_file(released / "model.safetensors")
    tensors["layers.2.blocks.1.conv1.weight"] = torch.zeros(128, 128, 3, 3, 1)
    save_file(tensors, tmp_path / "model.safetensors")
    target = build_encoder()
    before = target.state_dict()["conv_init.weight"].clone()
    with pytest.raises(WeightLoadError, match=r"1 mis-shaped key\(s\): layers\.2\.blocks\.1\.conv1\.weight") as err:
        load_encoder_weights(target, tmp_path / "model.safetensors")
    assert str(tmp_path / "model.safetensors") in str(err.value)
    assert torch.equal(target.state_dict()["conv_init.weight"], before)  # nothing half-loaded


def test_missing_key_fails_naming_the_key(released, tmp_path):
    tensors = load_file(released / "model.safetensors")
    del tensors["layers.4.blocks.3.norm2.running_var"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(WeightLoadError, match=r"1 missing key\(s\): layers\.4\.blocks\.3\.norm2\.running_var"):
        load_encoder_weights(build_encoder(), tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "weights.pt", "model.ckpt"])
def test_corrupt_file_fails_naming_the_file(released, tmp_path, name):
    data = (released / "model.safetensors").read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 3])  # a truncated download
    with pytest.raises(WeightLoadError, match="truncated") as err:
        load_encoder_weights(build_encoder(), bad)
    assert str(bad) in str(err.value)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="CT-FM weights not found"):
        load_encoder_weights(build_encoder(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightLoadError, match="folder without weights"):
        load_encoder_weights(build_encoder(), tmp_path / "empty")


def _load_and_compare(target: nn.Module, path, encoder, **kwargs) -> None:
    load_encoder_weights(target, path, **kwargs)
    assert _same_tensors(find_encoder(target).state_dict(), encoder.state_dict())


def test_bare_safetensors(released, encoder):
    _load_and_compare(build_encoder(), released / "model.safetensors", encoder)


def test_segresnetds_state_dict_into_encoder_and_segresnetds(encoder, tmp_path):
    full = build_segmentation_network(out_channels=3)
    load_encoder_weights(full, save_pretrained(encoder, tmp_path / "enc"))
    torch.save(full.state_dict(), tmp_path / "segresnetds.pt")
    _load_and_compare(build_encoder(), tmp_path / "segresnetds.pt", encoder)

    target = build_segmentation_network(out_channels=118)
    decoder_before = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("encoder.")}
    _load_and_compare(target, tmp_path / "segresnetds.pt", encoder)
    decoder_after = {k: v for k, v in target.state_dict().items() if not k.startswith("encoder.")}
    assert _same_tensors(decoder_before, decoder_after)  # the decoder is left fresh


def test_lightning_checkpoint_with_compile_prefix_and_projection_head(encoder, tmp_path):
    state = {f"model._orig_mod.backbone.{k}": v for k, v in encoder.state_dict().items()}
    state["model._orig_mod.projection_head.layers.0.weight"] = torch.rand(256, 512)
    state["model._orig_mod.projection_head.layers.2.weight"] = torch.rand(128, 256)
    ckpt = {"epoch": 449, "global_step": 225000, "state_dict": state, "optimizer_states": [], "callbacks": {}}
    torch.save(ckpt, tmp_path / "epoch=449-step=225000.ckpt")
    _load_and_compare(build_encoder(), tmp_path / "epoch=449-step=225000.ckpt", encoder)


def test_monai_bundle_model_pt_and_bundle_folder(encoder, tmp_path):
    net = CTFMEmbedder(encoder)
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / "bundle" / "models" / "model.pt")
    _load_and_compare(build_encoder(), tmp_path / "bundle" / "models" / "model.pt", encoder)
    _load_and_compare(build_encoder(), tmp_path / "bundle", encoder)  # the bundle root itself


def test_classifier_backbone(released, encoder):
    classifier = nn.Sequential()
    classifier.add_module("backbone", build_encoder())
    classifier.add_module("head", nn.Linear(512, 1))
    _load_and_compare(classifier, released, encoder)


def test_several_encoders_need_a_prefix(encoder, tmp_path):
    state = {f"student.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"teacher.{k}": torch.zeros_like(v) for k, v in encoder.state_dict().items()})
    torch.save(state, tmp_path / "two.pt")
    with pytest.raises(WeightLoadError, match=r"2 encoders, under the prefixes \['student\.', 'teacher\.'\]"):
        load_encoder_weights(build_encoder(), tmp_path / "two.pt")
    _load_and_compare(build_encoder(), tmp_path / "two.pt", encoder, prefix="student.")


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy_pickle"])
def test_untrusted_pickle_is_refused_not_run_with_our_message(encoder, tmp_path, legacy):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": encoder.state_dict(), "hyper_parameters": _Payload(marker)}, tmp_path / "evil.ckpt",
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(WeightLoadError, match="refused") as err:
        load_encoder_weights(build_encoder(), tmp_path / "evil.ckpt")
    assert not marker.exists()
    assert str(tmp_path / "evil.ckpt") in str(err.value) and "only if you trust" in str(err.value).lower()
    # torch's own hint ("weights_only=False will likely succeed") is neither shown nor chained
    assert "likely succeed" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


def test_config_json_of_another_topology_is_refused_where_ct_fm_is_promised(tmp_path):
    small = save_pretrained(build_encoder(init_filters=16), tmp_path / "small")
    with pytest.raises(WeightLoadError, match=r"init_filters 16 \(CT-FM: 32\).*256-d outputs.*not be CT-FM") as err:
        load_pretrained(small)
    assert str(small / "config.json") in str(err.value)
    assert load_pretrained(small, require_ct_fm=False).conv_init.out_channels == 16  # asked for explicitly

    instance = save_pretrained(build_encoder(norm="instance"), tmp_path / "instance")
    with pytest.raises(WeightLoadError, match=r"norm instance \(CT-FM: batch\)"):
        load_pretrained(instance)


def test_the_embed_command_refuses_non_ct_fm_weights(tmp_path, capsys):
    import nibabel as nib

    from ctfm.cli.main import main
    from ctfm.data.phantoms import make_body_phantom

    nib.save(make_body_phantom(seed=0, shape=(16, 32, 32)).to_nifti(), tmp_path / "ct.nii.gz")
    small = save_pretrained(build_encoder(init_filters=16), tmp_path / "small")
    args = ["embed", "--weights", str(small), "--output-dir", str(tmp_path / "e"), str(tmp_path / "ct.nii.gz")]
    assert main(args) == 1
    assert "not the CT-FM encoder" in capsys.readouterr().err
    assert not list((tmp_path / "e").glob("*.npy"))  # before: 256-d "CT-FM" embeddings, exit 0


@pytest.mark.parametrize(
    "overrides, diagnosis",
    [
        ({"norm": "instance"}, "norm is instance or group .* in the file but batch"),
        ({"spatial_dims": 2}, "2-D network; CT-FM is 3-D"),
        ({"init_filters": 16}, "init_filters is 16 in the file but 32"),
        ({"blocks_down": (1, 2, 2, 4)}, r"blocks_down is \[1, 2, 2, 4\] in the file but \[1, 2, 2, 4, 4\]"),
    ],
)
def test_mismatch_is_diagnosed(overrides, diagnosis, tmp_path):
    other = build_encoder(**overrides)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightLoadError, match=f"Diagnosis: .*{diagnosis}"):
        load_encoder_weights(build_encoder(), tmp_path / "other.pt")


# --- the bundles' ct_fm_weights: "" = random init, several input channels -----------------------


def test_one_channel_weights_expand_over_the_input_channels(tmp_path):
    """The triage layout with windows as channels: 4 equal channels give the 1-channel encoder's response."""
    single = _random_encoder(seed=2, init_filters=8)
    weights = save_pretrained(single, tmp_path / "small")
    four = load_encoder_weights(build_encoder(init_filters=8, in_channels=4), weights, expand_input_channels=True)
    kernel = single.state_dict()["conv_init.weight"]
    assert four.conv_init.weight.shape == (8, 4, 3, 3, 3)
    torch.testing.assert_close(four.conv_init.weight, kernel.repeat(1, 4, 1, 1, 1) / 4)
    rest = {k: v for k, v in single.state_dict().items() if k != "conv_init.weight"}
    assert all(torch.equal(four.state_dict()[k], v) for k, v in rest.items())
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(four.eval()(x.repeat(1, 4, 1, 1, 1))[-1], single.eval()(x)[-1], atol=1e-5, rtol=1e-4)
    # Without the option the channel mismatch is an error that names it, and nothing is loaded.
    with pytest.raises(WeightLoadError, match="in_channels is 1 in the file but 4 in the network"):
        load_encoder_weights(build_encoder(init_filters=8, in_channels=4), weights)


def test_ct_fm_weights_setting_empty_keeps_random_init_and_a_path_loads(released, encoder):
    """``load_ct_fm_weights`` is what every bundle's ``initialize`` calls with ``@ct_fm_weights``."""
    torch.manual_seed(5)
    fresh = build_encoder()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    for empty in ("", None):
        assert _same_tensors(load_ct_fm_weights(fresh, empty).state_dict(), before)
    assert _same_tensors(load_ct_fm_weights(fresh, released).state_dict(), encoder.state_dict())


@pytest.mark.parametrize("form", ["released", "pt"])
def test_shape_check_reads_no_values_and_finds_what_a_load_finds(released, encoder, tmp_path, form):
    """``check_encoder_weights`` (the Auto3DSeg template's check before training) works on a meta-device
    network from the shapes alone, and stops on the mismatch the load would stop on."""
    path = released if form == "released" else tmp_path / "encoder.pt"
    if form == "pt":
        torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in encoder.state_dict().items()}}, path)
    with torch.device("meta"):
        network = build_segmentation_network(out_channels=3)
    assert check_encoder_weights(network, path).is_file()
    assert all(t.is_meta for t in read_state_dict(path, shapes_only=True).values())
    torch.save(build_encoder(init_filters=16).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightLoadError, match="init_filters is 16 in the file but 32"):
        check_encoder_weights(network, tmp_path / "other.pt")


def test_foreign_network_is_named(tmp_path):
    torch.save(SegResNet(spatial_dims=3, init_filters=8).state_dict(), tmp_path / "segresnet.pt")
    with pytest.raises(WeightLoadError, match="MONAI SegResNet"):
        load_encoder_weights(build_encoder(), tmp_path / "segresnet.pt")


def test_full_segmentation_network_in_released_layout(tmp_path):
    """The released whole-body model: a full SegResNetDS, 118 outputs, depth 4, config.json + safetensors."""
    torch.manual_seed(3)
    source = build_segmentation_network(out_channels=118, dsdepth=4)
    (tmp_path / "whole_body").mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "whole_body/model.safetensors")
    target = load_network_weights(build_segmentation_network(out_channels=118, dsdepth=4), tmp_path / "whole_body")
    assert _same_tensors(target.state_dict(), source.state_dict())

    with pytest.raises(WeightLoadError, match="the decoder differs"):
        load_network_weights(build_segmentation_network(out_channels=5, dsdepth=4), tmp_path / "whole_body")


@pytest.mark.parametrize("form", ["released", "prefixed"])
def test_encoder_only_file_where_a_whole_network_is_expected_is_named_so(released, encoder, tmp_path, form):
    path = released
    if form == "prefixed":  # e.g. a CTFMEmbedder / pretraining export: the encoder under "embedder.encoder."
        path = tmp_path / "embedder.pt"
        torch.save({f"embedder.encoder.{k}": v for k, v in encoder.state_dict().items()}, path)
    with pytest.raises(WeightLoadError, match=r"Diagnosis: the file holds only an encoder \(161 SegResEncoder") as err:
        load_network_weights(build_segmentation_network(out_channels=118), path)
    assert "decoder differs" not in str(err.value) and "ct_fm_weights" in str(err.value)


def test_save_never_replaces_an_existing_folder(released, encoder):
    before = (released / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(_random_encoder(seed=5), released)
    assert (released / "model.safetensors").stat().st_mtime_ns == before


def test_convert_weights_cli(encoder, tmp_path, capsys):
    from ctfm.cli.main import main

    state = {f"model.backbone.{k}": v for k, v in encoder.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    assert main(["convert-weights", "--input", str(tmp_path / "last.ckpt"), "--output", str(tmp_path / "out")]) == 0
    assert _same_tensors(read_state_dict(tmp_path / "out"), encoder.state_dict())
    # A second run refuses to replace the folder and says so, without a traceback.
    assert main(["convert-weights", "--input", str(tmp_path / "last.ckpt"), "--output", str(tmp_path / "out")]) == 1
    assert "overwrite" in capsys.readouterr().err
