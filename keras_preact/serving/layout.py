"""TF Serving's folder layout: a model's base folder holding numbered version folders
(`export_dir/<version>/saved_model.pb`). No framework needed.

Exports are written to a hidden partial folder beside the version (`.<version>.partial-*`) and
renamed into place when complete, so a numbered folder is either absent or whole; a partial
folder left by a killed export is never served and never blocks the next export. While it writes,
the export holds a lock on a file in its partial folder (`writer_lock`), so that a reader tells a
folder still being written from one left by a killed export (`being_written`).
"""

import contextlib
import fcntl
import os
import re
import tempfile

from keras_preact import choices

VERSION = re.compile(r"0|[1-9][0-9]*")  # a version folder's name, as the version prints
PARTIAL = ".partial-"  # in the name of a version folder being written
MAX_VERSION = 2**63 - 1  # TF Serving reads versions as int64
WRITER_LOCK = ".writer.lock"  # in a partial folder: locked by the export writing it
BEING_WRITTEN = "an export still being written (served once it completes)"
ABANDONED = "an export that did not finish (safe to delete)"
NOT_A_VERSION = f"not a version folder: versions are named 0 to {MAX_VERSION} without leading zeros (rename it)"


def check_export_dir(export_dir):
    """A ValueError or OSError unless `export_dir` can hold version folders: an existing folder, or
    a path whose nearest existing parent is a writable folder."""
    if not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(export_dir):
        raise ValueError(f"export_dir must be a path, got {export_dir!r}.")
    export_dir = os.fspath(export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise NotADirectoryError(f"export_dir {export_dir!r} is a file; pass a folder for the version folders.")
    found = unwritable(export_dir)
    if found is None:
        return
    existing, reason = found
    if reason == "file":
        raise NotADirectoryError(f"export_dir {export_dir!r} lies under the file {existing!r}; pass a folder path.")
    if reason == "permissions":
        raise PermissionError(f"export_dir {export_dir!r}: {existing!r} is not writable.")
    raise PermissionError(f"export_dir {export_dir!r}: no folder can be created in {existing!r} ({reason}).")


def unwritable(path):
    """Why this process cannot make the folder `path` (or write in it): None where it can, else the
    nearest existing path at or above it and what stops it — "file" (that path is a file),
    "permissions", or the file system's reason where the permission bits allow but no folder can be
    made (/proc, a read-only mount, which the bits do not show for root)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return existing, "file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "permissions"
    try:  # the bits say yes: try one
        os.rmdir(tempfile.mkdtemp(prefix=".keras_preact-probe-", dir=existing))
    except OSError as error:
        return existing, error.strerror
    return None


def is_version(number):
    """Whether the int `number` is a version TF Serving reads (an int64 of at least 0): the one
    bound of versions, wherever they come from."""
    return 0 <= number <= MAX_VERSION


def check_version(argument, version):
    """`version` as an int if it is a version an export may write (1 to int64's largest); a
    ValueError naming `argument` otherwise."""
    version = choices.check_count(argument, version)
    if not is_version(version):
        raise ValueError(f"{argument}={version} is above {MAX_VERSION}, the largest version TF Serving reads (int64).")
    return version


def parse_version(text):
    """The version that `text` names as TF Serving parses it (decimal digits as an int64, leading
    zeros allowed: "007" is 7), or None where it names none.

    >>> parse_version("007"), parse_version("9" * 5000), parse_version("-1"), parse_version("٣")
    (7, None, None, None)
    """
    if not re.fullmatch(r"[0-9]+", text):  # not int()'s syntax: no signs, underscores or other scripts' digits
        return None
    digits = text.lstrip("0") or "0"
    # Counted before int(): Python refuses thousands of digits, and no such number is a version.
    return int(digits) if len(digits) <= len(str(MAX_VERSION)) and is_version(int(digits)) else None


def shown(text, at_most=40):
    """`text`, shortened to `at_most` characters where it is longer (a path part in a message)."""
    return text if len(text) <= at_most else f"{text[:at_most // 2]}...({len(text)} characters)"


def versions(export_dir):
    """The numbered version folders of `export_dir`, ascending (complete or not)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if _names_a_version(name))


def _names_a_version(name):
    """Whether the folder `name` is a version as exports write them: digits without leading zeros, up to int64."""
    return VERSION.fullmatch(name) is not None and parse_version(name) is not None


def next_version(export_dir):
    """One more than the highest numbered version folder in `export_dir` (1 when there is none)."""
    return max(versions(export_dir), default=0) + 1


def partial_prefix(version):
    """The name prefix of the hidden folder that `version` is written to before its rename."""
    return f".{version}{PARTIAL}"


@contextlib.contextmanager
def writer_lock(partial):
    """Marks the partial folder `partial` as being written while the block runs: an exclusive lock
    (flock) on its `WRITER_LOCK` file, which is removed when the block ends (the version folder
    holds the SavedModel alone). The lock dies with its process, so a killed export's folder is
    not `being_written`."""
    path = os.path.join(partial, WRITER_LOCK)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocking: a reader's test holds it for an instant
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def being_written(partial):
    """Whether an export still writes the partial folder `partial` (it holds its `writer_lock`)."""
    try:
        with open(os.path.join(partial, WRITER_LOCK), "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file: an export from before the lock, or killed before it made its file
        return False
    return False


def incomplete(version_dir):
    """Why `version_dir` is not a whole SavedModel, or None when it is."""
    if not os.path.isfile(os.path.join(version_dir, "saved_model.pb")):
        return "no saved_model.pb"
    variables = os.path.join(version_dir, "variables")
    if os.path.isdir(variables) and not os.path.isfile(os.path.join(variables, "variables.index")):
        return "no variables/variables.index"
    return None


def servable_versions(export_dir):
    """(complete, skipped): the complete version numbers, ascending, and a `(folder name, reason)`
    for every numbered folder that is not a whole SavedModel and every partial folder (`BEING_WRITTEN`
    or `ABANDONED`)."""
    complete, skipped = [], []
    for version in versions(export_dir):
        reason = incomplete(os.path.join(export_dir, str(version)))
        if reason:
            skipped.append((str(version), reason))
        else:
            complete.append(version)
    for name in sorted(os.listdir(export_dir)) if os.path.isdir(export_dir) else ():
        if PARTIAL in name:
            skipped.append((name, BEING_WRITTEN if being_written(os.path.join(export_dir, name)) else ABANDONED))
        elif re.fullmatch(r"[0-9]+", name) and not _names_a_version(name):
            skipped.append((shown(name), NOT_A_VERSION))
    return complete, skipped
