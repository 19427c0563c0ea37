"""``pete-serve`` with another app factory: ``python -m loadtest.serve module:function``.

The console entry point (``app.cli.main``: options, settings check, merged /metrics for several
workers, exit 0 after a drain) serving a variant of the app, e.g. ``reliability.harness:create_app``
(fault switches) or ``bench.teacher_backend:create_app`` (MiniLM).
"""

from __future__ import annotations

import sys

from app import cli

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m loadtest.serve module:function")
    sys.exit(cli.main([], factory=sys.argv[1]))
