"""The manifest CSV (one series a row, with its local folder), the ``s5cmd`` download manifest, and the
list of series folders the pretraining preparation step reads back from a manifest."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

from ctfm.io import csv_text, refuse_existing, write_text_atomic
from ctfm.pretraining.idc.layout import root_str, series_folder_str, with_local_paths

MANIFEST_COLUMNS = (
    "series_uid",
    "collection",
    "patient_id",
    "study_uid",
    "instance_count",
    "modality",
    "series_description",
    "license",
    "series_init_idc_version",
    "series_size_mb",
    "s3_url",
    "local_path",
)
AWS_ENDPOINT = "https://s3.amazonaws.com"
S5CMD_COMMAND = f"s5cmd --no-sign-request --endpoint-url {AWS_ENDPOINT} run {{manifest}}"


def write_manifest_csv(
    rows: list[dict], path: str | Path, *, download_root: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write the manifest CSV (MANIFEST_COLUMNS).

    ``local_path`` is each series' folder under ``download_root``; without one, rows must carry it already
    (from :func:`with_local_paths`).
    """
    path = Path(path)
    refuse_existing([path], overwrite)
    if download_root is not None or not all(r.get("local_path") for r in rows):
        rows = with_local_paths(rows, download_root)
    write_text_atomic(path, csv_text(MANIFEST_COLUMNS, rows))
    return path


def s5cmd_lines(rows: list[dict], download_root: str | Path | None = None) -> tuple[list[str], int]:
    """``cp <series_aws_url> <folder>/`` per series; also the number skipped for having no URL.

    The folder is the row's ``local_path`` when ``download_root`` is None, else rebuilt under it. s5cmd
    splits each line as a POSIX shell would, so a folder with spaces is quoted.
    """
    root = None if download_root is None else root_str(download_root)
    lines, skipped = [], 0
    for r in rows:
        url = r.get("s3_url") or ""
        if not url.startswith("s3://"):
            skipped += 1
            continue
        if not url.endswith("*"):
            url = url.rstrip("/") + "/*"
        folder = r["local_path"] if root is None else series_folder_str(root, r)
        lines.append(f"cp {url} {shlex.quote(folder + '/')}")
    return lines, skipped


def write_s5cmd_manifest(
    rows: list[dict], path: str | Path, *, download_root: str | Path | None = None, overwrite: bool = False
) -> tuple[Path, int]:
    """Write the s5cmd manifest; run it with ``S5CMD_COMMAND``. Returns the path and the number skipped.

    The first line is a comment (s5cmd skips lines that start with ``#``) giving the command to run.
    """
    path = Path(path)
    refuse_existing([path], overwrite)
    lines, skipped = s5cmd_lines(rows, download_root)
    header = f"# {len(lines)} IDC series for CT-FM. Download: {S5CMD_COMMAND.format(manifest=shlex.quote(str(path)))}"
    write_text_atomic(path, "\n".join([header, *lines]) + "\n")
    return path, skipped


def manifest_to_series_folders(manifest_csv: str | Path, download_root: str | Path | None = None) -> list[Path]:
    """The DICOM series folders of a manifest, in its order: the input of the pretraining preparation step.

    Without ``download_root``, the manifest's ``local_path`` column (absolute, written by this tool). With
    it, each folder is rebuilt under ``download_root`` in the same layout, for data that was downloaded or
    moved elsewhere.
    """
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise FileNotFoundError(f"{manifest_csv}: manifest not found; build it with ctfm idc-manifest")
    with manifest_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        rows = list(reader)
    if download_root is None:
        if "local_path" not in columns:
            raise ValueError(f"{manifest_csv}: no local_path column; pass download_root (the s5cmd destination)")
        empty = [i + 2 for i, r in enumerate(rows) if not r["local_path"]]
        if empty:
            raise ValueError(f"{manifest_csv}: local_path is empty on line(s) {empty[:5]}; pass download_root")
        return [Path(r["local_path"]) for r in rows]
    needed = {"collection", "patient_id", "study_uid", "series_uid"}
    if needed - columns:
        raise ValueError(f"{manifest_csv}: columns {sorted(needed - columns)} are missing; is it a ctfm manifest?")
    root = root_str(download_root)
    return [Path(series_folder_str(root, r)) for r in rows]
