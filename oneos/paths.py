"""Where the project's own files are: the repository's top folders, or share/oneos in a wheel install."""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def shared(relative: str) -> Path:
    """A file or folder shipped with OneOS (schemas/, manifests/), wherever it was installed."""
    in_repo = _REPO / relative
    if in_repo.exists():
        return in_repo
    return Path(sys.prefix) / "share" / "oneos" / relative
