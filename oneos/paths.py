"""Where the project's own files are: the repository's top folders, or share/oneos in an install.

A source checkout (`pip install -e .`, or running from the tree) reads schemas/ and manifests/
beside the package. A wheel install carries them as data files, which pip puts under the
install's prefix: PREFIX/share/oneos beside PREFIX/lib/pythonX.Y/site-packages/oneos, whether
PREFIX is a virtual environment, ~/.local (`pip install --user`), `--prefix DIR` or the system.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from oneos.errors import OneOSError

_PACKAGE = Path(__file__).resolve().parent


def _install_prefix(site_packages: Path) -> Path:
    """PREFIX of PREFIX/lib/pythonX.Y/site-packages (the layout of this Python's install scheme)."""
    try:
        depth = len(Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data")).parts)
    except ValueError:
        depth = 3
    return site_packages.parents[min(depth, len(site_packages.parents)) - 1]


def candidates(relative: str) -> list[Path]:
    """Where `relative` (e.g. "schemas") may be, most likely first."""
    places = []
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file():
        places.append(checkout / relative)
    places.append(_install_prefix(_PACKAGE.parent) / "share" / "oneos" / relative)
    places.append(Path(sys.prefix) / "share" / "oneos" / relative)
    return list(dict.fromkeys(places))


def shared(relative: str) -> Path:
    """A file or folder shipped with OneOS (schemas/, manifests/...), wherever it was installed."""
    places = candidates(relative)
    for place in places:
        if place.exists():
            return place
    raise OneOSError(f"cannot find OneOS's {relative} in {' or '.join(map(str, places))}; reinstall oneos")


def oneos_home() -> Path:
    """Where OneOS keeps a user's config, data and token: $ONEOS_HOME, else ~/.oneos."""
    return Path(os.environ.get("ONEOS_HOME") or Path.home() / ".oneos")


class PathEscape(OneOSError):
    """A name that was to become a path inside a folder would lead out of it (or names no file)."""


def inside(folder: str | os.PathLike, *parts: str, what: str = "name") -> Path:
    """`folder/parts...`, once checked to stay inside `folder`; PathEscape saying which name
    leaves which folder otherwise.

    Refused: an empty part, a NUL, an absolute part, a `..` that climbs out, a path that names
    the folder itself, and a symbolic link on the way (the last part included) that leads out.
    Names from the Name Server, a manifest or a config file go through here before they touch
    the disk. (What changes on disk after the check, an agent swapping a folder for a link,
    is the sandbox's to prevent, not this check's.)
    """
    shown = "/".join(str(p) for p in parts)
    for part in parts:
        if not isinstance(part, str) or not part:
            raise PathEscape(f"{what} {shown!r} is empty or has an empty part: it names no file in {folder}")
        if "\0" in part:
            raise PathEscape(f"{what} {shown!r} holds a NUL character, which no file name may")
        if os.path.isabs(part):
            raise PathEscape(f"{what} {shown!r} is an absolute path: it must name a file inside {folder}")
    root = os.path.abspath(folder)
    target = os.path.join(root, *parts)
    lexical = os.path.normpath(target)
    if lexical == root:
        raise PathEscape(f"{what} {shown!r} names {folder} itself, not a file in it")
    if os.path.commonpath([root, lexical]) != root:
        raise PathEscape(f"{what} {shown!r} leads out of {folder} (through '..')")
    real_root = os.path.realpath(root)
    real = os.path.realpath(target)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise PathEscape(f"{what} {shown!r} leads out of {folder} through a symbolic link (to {real})")
    return Path(folder, *parts)
