"""The end of a failed bundle run: our message as the last lines, the full traceback in a log file.

Through ``python -m monai.bundle run`` an error from our checks otherwise sits inside tens to hundreds
of lines of traceback ending in MONAI's ``RuntimeError: Failed to evaluate ConfigExpression``. Every
bundle config imports this module first (``"$import ctfm.bundle_errors"``); MONAI evaluates all of a
config's ``imports`` before any other item, so the import installs :func:`report_failure` as
``sys.excepthook`` before any of our checks can raise. A failed run then ends with::

    The run failed; the full traceback is in <output_dir>/error_<time>.log
    CTInputError: <file>: <the problem>. <the fix>

and exits with status 1. A run refused before its output folder exists (most checks run before any
work) leaves no folder: its log goes to the system's temporary folder. Where no log can be written, the
traceback is printed first. Nothing changes in a process that only reads a bundle config (MONAI Label, the tests).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

from ctfm.io import root_cause, write_text_atomic

# Our errors as the traceback text of a DataLoader worker shows them (a worker's error is re-raised
# in the main process with the worker's whole traceback as its message).
_OURS_IN_TEXT = re.compile(r"^(?:ctfm\.[\w.]*\.)?(\w*Error|FileNotFoundError|FileExistsError): (.*?)(?=\n\n\S|\n*\Z)",
                           re.M | re.S)


def failure_message(err: BaseException) -> str:
    """``"<Type>: <message>"`` of the error that says what went wrong (:func:`ctfm.io.root_cause`)."""
    cause = root_cause(err)
    text = str(cause)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the message is a traceback
        found = [m for m in _OURS_IN_TEXT.finditer(text) if m.group(0).startswith(("ctfm.", "File"))]
        if found:
            return f"{found[0].group(1)}: {found[0].group(2).strip()}"
    return f"{type(cause).__name__}: {text}"


def run_output_dir(tb) -> Path | None:
    """The ``output_dir`` of the failed bundle run, if MONAI had resolved it before the error, else the
    ``--output_dir`` given on the command line, else ``None``.

    The running workflow is found in the traceback's frames (MONAI's ``run`` holds it), so no config
    has to say where its output goes twice.
    """
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            # the instance's own attributes: a workflow's getattr looks names up in its config, and raises
            parser = getattr(value, "__dict__", {}).get("parser") if not isinstance(value, type) else None
            resolver = getattr(parser, "ref_resolver", None)
            out = getattr(resolver, "resolved_content", {}).get("output_dir")
            if isinstance(out, (str, os.PathLike)) and str(out):
                return Path(out)
        tb = tb.tb_next
    argv = sys.argv
    given = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--output_dir"), "")
    return Path(given) if given and not given.startswith(("$", "@", "%")) else None


def write_log(output_dir: Path | None, text: str) -> Path:
    """``text`` in a new ``error_<time>.log`` (never replacing an earlier log) in ``output_dir`` if it exists,
    else in the system's temporary folder: a run refused before it wrote anything creates no output folder."""
    folder = output_dir if output_dir is not None and output_dir.is_dir() else Path(tempfile.gettempdir())
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    path = folder / (f"error_{stamp}.log" if folder == output_dir else f"ctfm_error_{stamp}_{os.getpid()}.log")
    if path.exists():
        path = path.with_name(f"{path.stem}_{os.getpid()}.log")
    return write_text_atomic(path, text)


def report_failure(exc_type, exc, tb) -> None:
    """``sys.excepthook`` of a bundle run: the traceback to a log (or first), our message last."""
    if not isinstance(exc, Exception):  # Ctrl-C, SystemExit: Python's own report
        sys.__excepthook__(exc_type, exc, tb)
        return
    full = "".join(traceback.format_exception(exc_type, exc, tb))
    where = None
    try:
        where = write_log(run_output_dir(tb), full)
    except Exception as err:  # noqa: BLE001 - e.g. an unwritable folder: the traceback goes to the terminal instead
        full += f"\n(could not write the error log: {err})\n"
    if where is None:
        sys.stderr.write(full)
        sys.stderr.write("\nThe run failed; the full traceback is above.\n")
    else:
        sys.stderr.write(f"\nThe run failed; the full traceback is in {where}\n")
    sys.stderr.write(failure_message(exc) + "\n")
    sys.stderr.flush()


def _record_without_engine_traceback(*args, **kwargs) -> logging.LogRecord:
    """MONAI's StatsHandler logs the whole traceback of an engine's error (``exception_raised``) and re-raises
    it; :func:`report_failure` writes that traceback to the log, so on the terminal the record keeps one line."""
    record = _make_record(*args, **kwargs)
    if record.funcName == "exception_raised" and record.exc_info:
        record.exc_info = None
    return record


_make_record = logging.getLogRecordFactory()
# Only in the bundle command (a user's run, torchrun's workers): a process that merely reads a config
# (MONAI Label, the tests) keeps its own error handling.
if Path(sys.argv[0]).as_posix().endswith("monai/bundle/__main__.py"):
    logging.setLogRecordFactory(_record_without_engine_traceback)
    sys.excepthook = report_failure
