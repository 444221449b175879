"""docs/paper_protocol.md is kept in step with the defaults it describes.

Each table row that names a place (*where*) holds a default; this reads that place (a bundle config id, the
Auto3DSeg template's hyper-parameters, a command-line default) and compares.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "docs" / "paper_protocol.md"
CODE = re.compile(r"`([^`]+)`")


def protocol_rows(path: Path = PROTOCOL) -> list[tuple[str, str, object]]:
    """(detail, locator, expected default) of every row whose *where* names a place."""
    rows = []
    header = None
    for line in path.read_text().splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "detail":
            header = cells
            continue
        where = cells[header.index("where")]
        spans = CODE.findall(where)
        if not spans:
            continue
        inline = re.search(r"=\s*`([^`]+)`", where)
        value = inline.group(1) if inline else CODE.findall(cells[header.index("default")])[0]
        rows.append((cells[0], spans[0], json.loads(value)))
    return rows


def bundle_default(locator: str):
    from monai.bundle import ConfigParser

    bundle, rest = locator.split("/", 1)
    config, key = rest.split("#", 1)
    configs = REPO / "bundles" / bundle / "configs"
    files = [configs / config] if config in ("train.json", "inference.json") else [configs / "train.json", configs / config]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    value = parser[key]
    while isinstance(value, str) and value.startswith("@"):  # follow plain references to another id
        value = parser[value[1:]]
    return value


def template_default(locator: str):
    _, key = locator.split("#", 1)
    value = yaml.safe_load((REPO / "auto3dseg_algo" / "ctfmsegresnet" / "configs" / "hyper_parameters.yaml").read_text())
    for part in key.split("#"):
        value = value[part]
    return value


def cli_default(locator: str):
    from ctfm.cli.main import build_parser

    _, command, option = locator.split()
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    return action.default


def read_default(locator: str):
    if locator.startswith("ctfm "):
        return cli_default(locator)
    if locator.startswith("ctfmsegresnet/"):
        return template_default(locator)
    return bundle_default(locator)


ROWS = protocol_rows()


def test_the_table_names_places_in_every_part():
    places = {locator.split("/")[0].split()[0] for _, locator, _ in ROWS}
    assert {"ct_fm_pretrain", "ct_fm_segmentation", "ct_fm_triage", "ctfmsegresnet", "ctfm"} <= places


@pytest.mark.parametrize(("detail", "locator", "expected"), ROWS, ids=[f"{r[1]}" for r in ROWS])
def test_default_matches_the_protocol_table(detail, locator, expected):
    actual = read_default(locator)
    if isinstance(expected, float) or isinstance(actual, float):
        assert actual == pytest.approx(expected), f"{detail}: {locator} is {actual!r}, the protocol table says {expected!r}"
    else:
        assert actual == expected, f"{detail}: {locator} is {actual!r}, the protocol table says {expected!r}"


def test_a_drifted_default_is_caught(tmp_path):
    """A table that says something else than the config is read as a mismatch: the check above can fail."""
    doc = tmp_path / "protocol.md"
    doc.write_text(
        "| detail | paper | code | default | where | note |\n|---|---|---|---|---|---|\n"
        "| learning rate | 2e-4 | 2e-4 | `0.0002` | `ct_fm_pretrain/train.json#learning_rate` | |\n"
    )
    [(detail, locator, expected)] = protocol_rows(doc)
    assert expected == pytest.approx(2e-4)
    assert read_default(locator) != pytest.approx(expected)


@pytest.mark.parametrize("bundle", ["ct_fm_pretrain", "ct_fm_segmentation", "ct_fm_triage"])
def test_multi_gpu_training_synchronises_batch_norm_on_gpus(bundle):
    """The authors trained every task with sync_batchnorm=True; each multi-GPU overlay converts the network."""
    text = (REPO / "bundles" / bundle / "configs" / "multi_gpu_train.json").read_text()
    assert "SyncBatchNorm.convert_sync_batchnorm(@network_def)" in text
