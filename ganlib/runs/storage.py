"""Writing files where a user can run out of room: a full disk or quota, or a read-only or forbidden place,
becomes ``StorageError``, one line that says what to do (``writing``). Every writer of a run's files goes
through it (``ganlib.runs.files``, the run lock, the prepared store)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ganlib.errors import StorageError

# Write failures a user fixes, as opposed to a bug or a broken disk: no space, and no permission.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_PERMITTED = {errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn a full disk or quota, or a read-only or forbidden place beside ``target``, met while writing
    ``target`` into ``StorageError``: one line that says what to do, and not retried by the Prefect tasks (it
    fails the same way until the user acts). Other ``OSError``s pass through unchanged, among them a file
    elsewhere that could not be read (a source image, whose own message names it)."""
    target = Path(target)
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        # A permission error is the write's when it names the target's folder, a file in it, or a folder above
        # (mkdir of a missing parent); not one without a name (a semaphore) or one elsewhere (a source image).
        named = Path(os.fsdecode(err.filename)) if err.filename is not None else None
        ours = named is not None and (named.is_relative_to(target.parent) or target.parent.is_relative_to(named))
        if not (err.errno in _NO_SPACE or (err.errno in _NOT_PERMITTED and ours)):
            raise
        raise StorageError(err.errno, os.strerror(err.errno), str(target)) from None  # (pyarrow adds its own words)
