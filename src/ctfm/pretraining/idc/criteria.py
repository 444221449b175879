"""What the paper selected from the Imaging Data Commons (supplement S1), and how a back end reports on it.

The paper selected about 148,000 CT series with the BigQuery SQL of its supplement S1: CT, public,
slice thickness 1..5 mm, more than 50 instances, one instance per position, no LOCALIZER image, from
IDC release 14 (metadata read from release 18). Table S5 gives the count per collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The paper's query selects from release 14 and reads its output columns from release 18 (supplement S1).
PAPER_IDC_VERSION = 14
PAPER_METADATA_IDC_VERSION = 18

# Paper, Methods: "148,000 CT scans from 81148 studies and 32643 patients"; Table S5 sums to 148,394.
PAPER_TOTALS = {"series": 148394, "studies": 81148, "patients": 32643, "collections": 69}
MIN_INSTANCES_EXCLUSIVE = 50  # "num_instances > 50"
SLICE_THICKNESS_MM = (1.0, 5.0)  # "min_SliceThickness >= 1 AND max_SliceThickness <= 5"

# The selection criteria of supplement S1, each with the SQL that states it there.
CRITERIA: dict[str, str] = {
    "modality_ct": 'Modality = "CT"',
    "public": 'access = "Public"',
    "in_release": "FROM `bigquery-public-data.idc_v14.dicom_all` (series served by the selected release)",
    "slice_thickness_1_5mm": "min_SliceThickness >= 1 AND max_SliceThickness <= 5",
    "more_than_50_instances": "num_instances > 50",
    "one_instance_per_position": "num_instances / position_count = 1",
    "no_localizer": 'has_localizer = "false" (no instance has LOCALIZER in ImageType)',
}
APPLIED, APPROXIMATED, NOT_APPLIED = "applied", "approximated", "not applied"


@dataclass
class Selection:
    """The series one back end selected, and exactly what it could and could not check."""

    rows: list[dict]  # MANIFEST_COLUMNS without local_path
    backend: str
    idc_version: int | None  # None: the current release
    criteria: dict[str, dict[str, str]]  # criterion -> {"status", "how"}
    source: str
    query_seconds: float
    retired_by_collection: dict[str, int] | None = None  # series the release served that IDC no longer serves
    notes: list[str] = field(default_factory=list)


def parse_version(value: int | str | None) -> int | None:
    """An IDC release number, or None for the current release ("current")."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "current"):
        return None
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"IDC version {value!r}: give a release number such as 14, or 'current'") from None
    if version < 1:
        raise ValueError(f"IDC version {version}: IDC releases are numbered from 1")
    return version
