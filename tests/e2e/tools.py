"""System programs the e2e tests drive (Debian's firefox-esr, nginx): found,
or the test fails under CI (``CI`` set; ``.ci/run`` installs them) and is
skipped, loudly, elsewhere."""
import os
import shutil
import warnings

import pytest


def find_program(names, override=None):
    """The path of the first of ``names`` on PATH (or /usr/sbin), or of the
    executable named by the environment variable ``override``; None if none."""
    configured = os.environ.get(override) if override else None
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path:
            return path
    return None


def require(path, package, tests):
    """``path`` when found; else fail under CI, skip with a warning elsewhere."""
    if path is not None:
        return path
    message = (f"{package.upper()} NOT FOUND: {tests} did NOT run. Install it with "
               f"`apt-get install -y {package}` (.ci/run does).")
    if os.environ.get("CI"):
        pytest.fail(message + " CI is set, so this is a failure.")
    warnings.warn(message)
    pytest.skip(message)
