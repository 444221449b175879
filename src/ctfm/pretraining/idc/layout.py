"""Where each series is downloaded to: idc-index's default folder layout."""

from __future__ import annotations

import functools
import re
from pathlib import Path

# idc-index's IDCClient.DOWNLOAD_HIERARCHY_DEFAULT, the layout `idc download` writes.
DOWNLOAD_LAYOUT = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@functools.lru_cache(maxsize=1 << 16)
def _safe_component(value, what: str) -> str:
    text = str(value).strip()
    if _UNSAFE.search(text):
        text = _UNSAFE.sub("_", text)
    if text in ("", ".", ".."):
        raise ValueError(f"{what} {value!r} cannot name a folder")
    return text


def series_folder_str(root: str, row: dict) -> str:
    # Plain strings and cached components: pathlib would cost seconds on a full selection (150,000 rows).
    series = row["series_uid"]
    series = _UNSAFE.sub("_", series.strip()) if _UNSAFE.search(series) else series
    if not series.strip("."):
        raise ValueError(f"series UID {row['series_uid']!r} cannot name a folder")
    return "/".join(
        (
            root,
            _safe_component(row["collection"], "collection"),
            _safe_component(row["patient_id"], "patient ID"),
            _safe_component(row["study_uid"], "study UID"),
            f"{_safe_component(row.get('modality') or 'CT', 'modality')}_{series}",
        )
    )


def root_str(download_root: str | Path) -> str:
    return str(Path(download_root).expanduser().resolve())


def series_folder(download_root: str | Path, row: dict) -> Path:
    """The folder a series is downloaded to, in idc-index's default layout.

    ``<root>/<collection>/<PatientID>/<StudyInstanceUID>/<Modality>_<SeriesInstanceUID>`` (DOWNLOAD_LAYOUT,
    what ``idc download`` writes); characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    ``download_root`` is made absolute.
    """
    return Path(series_folder_str(root_str(download_root), row))


def with_local_paths(rows: list[dict], download_root: str | Path) -> list[dict]:
    """Copies of ``rows`` with ``local_path``, the series folder under ``download_root`` (see :func:`series_folder`)."""
    root = root_str(download_root)
    return [{**r, "local_path": series_folder_str(root, r)} for r in rows]
