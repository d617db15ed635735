"""Allow-list matching: which step images and hostPath prefixes a pattern list admits.

Pure functions of a value and its allow-list, used by the settings check at startup
(:func:`topology.service.settings.check_startup`) and by the pipeline policy
(:func:`topology.service.security.check_policy`).
"""

from __future__ import annotations

import fnmatch
import posixpath


def image_allowed(image: str, allowlist: tuple[str, ...]) -> bool:
    """Whether `image` matches one of the globs (`*` also matches `/`)."""
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in allowlist)


def hostpath_allowed(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `path` is one of the prefixes or lies below one (path components, not text)."""
    path = posixpath.normpath(path)
    for prefix in prefixes:
        prefix = posixpath.normpath(prefix)
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return True
    return False
