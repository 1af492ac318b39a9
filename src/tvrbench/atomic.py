"""Atomic file writes: the one implementation every writer in tvrbench uses.

A file is written under a temporary name made by :func:`tempfile.mkstemp` in the destination's
folder, then moved into place with :func:`os.replace` (atomic on POSIX and Windows); when writing
fails the temporary file is removed and the destination is left as it was. A reader therefore
sees either the old file or the complete new one, never a partial write, even when a run is killed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path``.

    ``suffix`` is the temporary file's ending (e.g. ``".png"`` or ``".mp4"`` for writers that
    infer the format from the name).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain write would follow the umask
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """JSON encoding of NumPy scalars/arrays, tensors and paths (everything else as ``str``)."""
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays, torch tensors
        return obj.tolist()
    return str(obj)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON (NaN allowed, as Python's ``json`` writes it) written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default, allow_nan=True))


def atomic_write_csv(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    float_format: str | None = None,
) -> None:
    """CSV with ``columns`` first (keys found only in rows appended), a header even when empty;
    ``float_format`` (e.g. ``".6g"``) formats every float value."""
    if float_format is not None:
        rows = [
            {k: format(v, float_format) if isinstance(v, float) else v for k, v in row.items()}
            for row in rows
        ]
    extra = [k for row in rows for k in row if k not in columns]
    header = list(columns) + list(dict.fromkeys(extra))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` written atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
