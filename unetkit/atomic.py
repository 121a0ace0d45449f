"""Atomic file writing: a temporary file next to the target, renamed over it only when complete.

Every file unetkit writes (checkpoints, reports, metrics, exported models, predicted masks) goes through
:func:`atomic_write`, so a crash, a kill or a full disk never leaves a half-written file under the
target's name: the old file (if any) survives intact.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Prefix and suffix of the temporary files, so stale ones from killed runs can be found and removed.
TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, option: str = "") -> None:
    """Refuse, before any slow work, a ``path`` whose folder cannot be created or written (one line, naming
    ``option`` when given, e.g. ``--out``)."""
    path = Path(path)
    folder = path.parent
    while not folder.exists():  # the nearest existing folder is where the missing ones would be created
        folder = folder.parent
    name = f"{option} {path}" if option else str(path)
    if not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"{name}: cannot write here ({folder} is a file, not a folder); choose a "
                                     "writable location")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"{name}: cannot write here ({folder} is not writable); choose a writable "
                                    "location")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    A crash mid-write leaves the old file intact (the rename is atomic on POSIX and Windows). The file
    gets the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask), not the private
    ``0o600`` of the temporary file. Errors name ``path``, not the temporary file.
    """
    path = Path(path)
    check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot write here ({e.strerror}); choose a writable location") from e
    os.close(fd)
    try:
        try:
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as e:
            raise _named(e, path) from e
        except RuntimeError as e:  # torch.save reports a full disk as a RuntimeError from its zip writer
            if _disk_full(path):
                raise OSError(errno.ENOSPC, f"{path}: no space left on device; free some space and "
                                            "run again (the previous file, if any, is intact)") from e
            raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _named(e: OSError, path: Path) -> OSError:
    if e.errno == errno.ENOSPC:
        return OSError(e.errno, f"{path}: no space left on device; free some space and run again "
                                "(the previous file, if any, is intact)")
    return OSError(e.errno, f"{path}: cannot write ({e.strerror or e}); choose a writable location")


def _disk_full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files that killed writes left in ``folder`` (not recursive); return them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.is_file() and p.name.startswith(TMP_PREFIX) and p.name.endswith(TMP_SUFFIX):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


#: Files and folders a training run writes into its run directory (``--overwrite`` removes only these).
RUN_FILES = ("config.yaml", "plan.yaml", "metrics.csv", "curves.png", "last.pt", "best.pt", "report.html",
             "metrics.json", "per_case.csv", "samples", "tensorboard")
#: The files unetkit writes inside each folder of ``RUN_FILES``: only files whose names match are ever removed.
RUN_FOLDER_FILES = {"samples": re.compile(r"epoch_\d{3,}\.png"),
                    "tensorboard": re.compile(r"events\.out\.tfevents\.[\w.-]+")}
LOCK_NAME = ".unetkit.lock"


def run_outputs(run_dir: str | Path) -> list[Path]:
    """The files in ``run_dir`` that an earlier unetkit run wrote: the known file names at the top, and inside
    ``samples/`` and ``tensorboard/`` only files named as unetkit names them (``epoch_007.png``,
    ``events.out.tfevents.*``). A user's own files, also inside those folders, are never listed.

    Raises :class:`RunFolderError` when a user's folder sits where unetkit writes a file (``best.pt/``), or a
    file where it writes a folder (a file named ``samples``): replacing either would destroy the user's data.
    """
    run_dir = Path(run_dir)
    found: list[Path] = []
    for name in RUN_FILES:
        target = run_dir / name
        folder = name in RUN_FOLDER_FILES
        if not (target.exists() or target.is_symlink()):
            continue
        if target.is_symlink() or target.is_dir() != folder:
            kind = "a link" if target.is_symlink() else "a folder" if target.is_dir() else "a file"
            raise RunFolderError(f"{target}: {kind} unetkit did not write sits where a run writes its "
                                 f"{'folder' if folder else 'file'} {name}; move it away or choose another --out")
        if not folder:
            found.append(target)
            continue
        pattern = RUN_FOLDER_FILES[name]
        found += sorted(p for p in target.iterdir()
                        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink())
    return found


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def claim_run_folder(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> object:
    """Make ``run_dir`` this process's run folder; return the lock (keep a reference while the run lasts).

    The lock is an OS file lock (``filelock``), so a killed run never leaves it held. A folder that holds
    an earlier run's files is refused unless ``resume`` (continue it) or ``overwrite`` (the files
    :func:`run_outputs` lists are deleted first; folders and every other file, also inside ``samples/``,
    are left alone). Stale temporaries of killed writes are removed.
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderError(f"{run_dir}: another unetkit run is using this run folder; wait for it to finish or "
                             "choose another --out") from None
    try:
        earlier = run_outputs(run_dir)
    except RunFolderError:
        lock.release()
        raise
    if earlier and not resume:
        if not overwrite:
            lock.release()
            shown = ", ".join(str(p.relative_to(run_dir)) for p in earlier[:3])
            raise RunFolderError(f"{run_dir}: holds an earlier run ({shown}...); continue it with "
                                 "--resume, replace it with --overwrite, or choose another --out")
        for target in earlier:  # only files unetkit wrote; folders and anything else in them stay
            target.unlink(missing_ok=True)
        for name in RUN_FOLDER_FILES:
            remove_stale_temporaries(run_dir / name)
    remove_stale_temporaries(run_dir)
    return lock
