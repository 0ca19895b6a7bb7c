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
