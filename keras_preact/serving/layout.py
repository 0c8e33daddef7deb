"""TF Serving's folder layout: a model's base folder holding numbered version folders
(`export_dir/<version>/saved_model.pb`). No framework needed.
"""

import os


def check_export_dir(export_dir):
    """A ValueError unless `export_dir` can hold version folders (a folder, or nothing yet)."""
    if not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(export_dir):
        raise ValueError(f"export_dir must be a path, got {export_dir!r}.")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise NotADirectoryError(f"export_dir {os.fspath(export_dir)!r} is a file; pass a folder for the version folders.")


def versions(export_dir):
    """The numbered version folders of `export_dir`, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if name.isdigit())


def next_version(export_dir):
    """One more than the highest numbered version folder in `export_dir` (1 when there is none)."""
    return max(versions(export_dir), default=0) + 1
