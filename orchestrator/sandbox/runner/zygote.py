"""A pooled container's visible phase, started before its workspace arrives (docker-pool).

Started by the supervisor exactly like the visible phase's pytest (the candidate's UID through
``setpriv``, no capability, a fresh interpreter with ``-P -s -B``, an environment built from
scratch, nothing of the supervisor's memory): it imports pytest and the reporter plugin now,
then blocks on its go pipe. On ``go`` it runs pytest on /workspace with the same switches as
``python -m pytest``; on anything else (EOF: the container is being discarded) it exits
without running anything. No untrusted code runs before the go.
"""

from __future__ import annotations

import importlib
import os
import sys


def main() -> int:
    go_fd = int(os.environ.pop("RSI_GO_FD", "-1"))
    import pytest  # noqa: F401 - the point: imported before the clock starts

    from . import reporter  # noqa: F401 - binds the result pipe (RSI_RESULT_FD) now
    from .testpaths import resolve  # with tomllib/configparser/glob: imported before any workspace file exists

    data = b""
    try:
        while len(data) < 2:
            chunk = os.read(go_fd, 2 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(go_fd)
    if data != b"go":
        os._exit(3)
    # The workspace exists only now: forget that its PYTHONPATH entries (a derived image's
    # /workspace/src) were missing when the interpreter started.
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        sys.path_importer_cache.pop(entry, None)
    importlib.invalidate_caches()
    targets = [f"/workspace/{p}" for p in resolve("/workspace")] or ["/workspace"]
    sys.argv = ["pytest", "-p", __package__ + ".reporter", "-p", "no:cacheprovider", "-q", "--rootdir", "/workspace",
                "--color=no", *targets]
    return pytest.console_main()


if __name__ == "__main__":
    sys.exit(main())
