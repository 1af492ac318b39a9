"""The environment of a benchmark script's measuring child process (``benchmarks/train_step.py``
measures every method in a fresh process, ``benchmarks/scoring.py`` a peak memory): this one's,
offline, with this process's import path handed on.

A method module found through ``sys.path`` here (a folder a test added, say) must be found in
the child too, so the folders on ``sys.path`` that are not the interpreter's own go in front of
the inherited ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import sys


def child_env() -> dict[str, str]:
    """This process's environment with ``HF_HUB_OFFLINE=1`` and ``PYTHONPATH`` = the folders of
    ``sys.path`` outside the interpreter's prefixes, then the inherited ``PYTHONPATH`` (each
    folder once)."""
    prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    extra = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(prefixes)]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join(dict.fromkeys([*extra, *inherited]))
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
