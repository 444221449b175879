"""Files in and out, one rule each: volume suffixes, scan ids, paths, atomic writes, CSV, output folders, errors.

Every tool, bundle script and benchmark uses these, so a rule changes in one place only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

# Single-file volume formats the ITK / NiBabel readers take; a folder is read as a DICOM series.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_volume_file(path: str | os.PathLike) -> bool:
    """True for a file whose name ends in one of :data:`VOLUME_SUFFIXES` (case-insensitive)."""
    path = Path(path)
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding a DICOM file: one named ``*.dcm`` or with the ``DICM`` marker at byte 128."""
    for child in sorted(Path(path).iterdir()):
        if child.is_file():
            if child.suffix.lower() == ".dcm":
                return True
            with open(child, "rb") as f:
                if f.read(132)[128:] == b"DICM":
                    return True
    return False


def strip_volume_suffix(name: str, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> str:
    """``case1.nii.gz`` -> ``case1``; a name without a volume suffix (a DICOM folder) is returned as is."""
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def scan_id(path: str | os.PathLike, unique: bool = False, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> str:
    """A file-system-safe id of a scan: its name without the volume suffix (one of ``suffixes``).

    ``unique=True`` appends a hash of the absolute path, for collections where two folders may hold
    scans of the same name (the pretraining cache of 148,000 series).
    """
    path = Path(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", strip_volume_suffix(path.name, suffixes)) or "scan"
    if not unique:
        return stem
    return f"{stem[-60:]}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


def absolute(path: str | os.PathLike | None) -> Path | None:
    """``path`` resolved against the caller's working directory (``~`` expanded); ``None`` stays ``None``.

    Every path handed to something that runs elsewhere (a bundle subprocess runs in its bundle folder)
    goes through here first, so a relative path means what the user meant.
    """
    if path is None or str(path) == "":
        return None
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def new_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path``; refuse one that already holds files, so no earlier result is overwritten."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already holds files; choose a new --output-dir so nothing is overwritten.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def as_bool(value, name: str = "overwrite") -> bool:
    """``true``/``false`` as an option or a bundle override passes it (JSON bool, or text from the command line)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise ValueError(f"{name} must be true or false, not {value!r}.")
        return value.strip().lower() == "true"
    return bool(value)


def input_ids(inputs: Iterable) -> dict[str, Path]:
    """``{scan id: input}`` of a run's inputs (paths, or datalist items with an ``image``), in their order.

    Results are named by :func:`scan_id`, so two inputs with one id (``case1.nii`` and ``case1.nii.gz``,
    two DICOM folders ``series1`` in different parents) would write the same files: they are refused
    here, before any work, naming both. Ids differing only in case collide too (macOS, Windows). One
    file given twice (a datalist listing a scan in two splits) is one input.
    """
    ids: dict[str, Path] = {}
    seen: dict[str, str] = {}
    for given in inputs:
        path = Path(given["image"] if isinstance(given, Mapping) else given)
        sid = scan_id(path)
        if sid in ids and absolute(ids[sid]) == absolute(path):
            continue
        if sid.casefold() in seen:
            raise ValueError(
                f"{ids[seen[sid.casefold()]]} and {path} would both write the results named {sid!r}; nothing was "
                "written. Rename one of them, or run them into different output folders.")
        seen[sid.casefold()] = sid
        ids[sid] = path
    return ids


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite=False, option: str = "--overwrite") -> list[Path]:
    """``paths`` (the files a run is about to write), after checking that none exists unless ``overwrite``.

    Called before any work, so a refused run costs nothing and an earlier result is never replaced
    silently. ``option`` is how the user says "replace them" (``--overwrite``, or a bundle's ``--overwrite true``).
    """
    paths = [Path(p) for p in paths]
    existing = [p for p in paths if p.exists()]
    if existing and not as_bool(overwrite):
        more = f" (and {len(existing) - 1} more of this run's outputs)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"{existing[0]}{more} already exists; nothing was written or overwritten. Pass {option} to replace "
            "it, or choose another output folder.")
    return paths


def check_outputs(inputs: Iterable, output_dir: str | os.PathLike, per_input: Sequence[str] = (),
                  per_run: Sequence[str] = (), overwrite=False, option: str = "--overwrite") -> dict[str, Path]:
    """The output rule of every inference tool and bundle, checked before any work; returns :func:`input_ids`.

    The run writes ``per_input`` names for each input (``{id}`` is replaced by its scan id, e.g.
    ``"{id}_seg.nii.gz"``) and ``per_run`` names once, all in ``output_dir``. Inputs whose outputs would
    collide are refused (:func:`input_ids`), and so are outputs that exist unless ``overwrite``
    (:func:`refuse_existing`).
    """
    ids = input_ids(inputs)
    out = Path(output_dir)
    planned = [out / name.format(id=sid) for sid in ids for name in per_input] + [out / name for name in per_run]
    refuse_existing(planned, overwrite, option)
    return ids


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_signature(path: str | os.PathLike) -> dict:
    """What identifies an input without reading it: absolute path, bytes and newest modification time
    (a DICOM folder: summed over its files). A different file under an old name gives another signature."""
    path = absolute(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [f.stat() for f in files]
    return {"source": str(path), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def refuse_other_settings(settings_file: str | os.PathLike, settings: dict) -> None:
    """A folder that a tool fills over several runs holds results of one set of weights and settings only:
    refuse, naming every value that differs there and now, if ``settings_file`` records other ones."""
    settings_file = Path(settings_file)
    if not settings_file.exists():
        return
    old = json.loads(settings_file.read_text())
    differ = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if differ:
        said = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise ValueError(f"{settings_file.parent} holds results made with other weights or settings ({said}); "
                         "nothing was written. Use a new --output-dir for these (one folder never mixes results), "
                         f"or the weights and settings recorded in {settings_file}.")


def user_mode(folder: bool = False) -> int:
    """The permissions a new file (``0o666``) or folder (``0o777``) gets under the user's umask.

    Files and folders made by ``tempfile`` (0o600 / 0o700) and renamed into place get these instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, so a kill never leaves
    a partial file under the final name. The file gets the permissions the user's umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:])  # keep .nii.gz so writers that look at the suffix still work
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, user_mode())  # mkstemp made it 0o600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def csv_text(columns: Sequence[str], rows: Iterable[dict | Sequence]) -> str:
    """CSV text with a header row; rows are dicts (missing keys -> empty) or sequences in column order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns] if isinstance(row, dict) else row)
    return buffer.getvalue()


_MONAI_WRAPPERS = ("Failed to evaluate", "Failed to instantiate", "applying transform")  # MONAI's re-raised errors


def root_cause(err: BaseException) -> BaseException:
    """Our own error inside MONAI's wrappers ("applying transform ...", config expressions), else the original.

    MONAI re-raises a transform's or a config expression's error as a ``RuntimeError`` whose
    ``__cause__`` (or ``__context__``) chain holds the original; ours are the ones defined in ``ctfm``
    (or a missing or existing file), and they already say what is wrong and how to fix it. Without
    one of ours, the first error of the chain that is not MONAI's wrapper.
    """
    chain, cur, seen = [], err, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    ours = [e for e in chain
            if type(e).__module__.startswith("ctfm") or isinstance(e, (FileNotFoundError, FileExistsError))]
    if ours:
        return ours[0]
    # Not ours: the first error that is not one of MONAI's wrappers (an error of the bundle's own scripts, torch's)
    unwrapped = [e for e in chain if not (isinstance(e, RuntimeError) and str(e).startswith(_MONAI_WRAPPERS))]
    return unwrapped[0] if unwrapped else err


def list_inputs(input: str | os.PathLike | Sequence) -> list[dict]:
    """``[{"image": path}, ...]``: the scans an inference ``input`` names, in a stable order.

    ``input`` (the bundles' inference ``input``) is a volume file, a DICOM series folder, a folder of
    either, or a list of those. A folder holding volume files gives each file (and each sub-folder, as
    a DICOM series); a folder holding only other files is one DICOM series.
    """
    if input is None or (isinstance(input, str) and not input):
        raise ValueError("no input: set --input to a NIfTI/NRRD file, a DICOM series folder, a folder of those, "
                         "or a JSON list of them.")
    paths = [input] if isinstance(input, (str, os.PathLike)) else list(input)
    items = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--input {given}: no such file or folder. Give a NIfTI/NRRD file, a DICOM "
                                    "series folder, or a folder of those.")
        if path.is_file():
            items.append({"image": str(path)})
            continue
        children = sorted(path.iterdir())
        scans = [c for c in children if is_volume_file(c)] + [c for c in children if c.is_dir()]
        if not children:
            raise FileNotFoundError(f"--input {given}: an empty folder, with no CT volume or DICOM series.")
        if not scans and not is_dicom_folder(path):
            raise FileNotFoundError(f"--input {given}: a folder with no CT volume (NIfTI/NRRD) and no DICOM file "
                                    f"(it holds only {', '.join(c.name for c in children[:5])}). Give a NIfTI/NRRD "
                                    "file, a DICOM series folder, or a folder of those.")
        # No volume files and no sub-folders: the folder is one DICOM series (its files often have no suffix).
        items += [{"image": str(c)} for c in scans] or [{"image": str(path)}]
    return items
