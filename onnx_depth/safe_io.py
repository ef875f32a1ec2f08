"""Safe file output: every file onnx-depth writes goes through here.

Rules (issue 13 items 5-7, 12; issue 14 umask):

* A destination must be a regular file path: refused (``InputError``, exit 2) when it names a
  directory (or ends with a path separator), is a symlink, a FIFO, a device or any other
  non-regular file, or when its parent folder is missing or not writable.
* Two outputs of one command (model, report, plan, plot, ORT files, db export) must not be the
  same file, and no output may be one of the inputs (model, external data, latency DB):
  compared by ``os.path.realpath`` and, for files that exist, by (st_dev, st_ino).
* Atomic write: a temporary file ``.onnx-depth-<random>.tmp`` is created in the destination
  folder with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never through a pre-planted link, never a fixed
  name), mode ``0o666 & ~umask`` (the kernel applies the umask, like any other tool), written,
  fsync'ed, then renamed over the destination with ``os.replace``. On any error the temporary
  file is removed; temporary files of our own naming left by a killed run (SIGKILL) are removed
  when older than ``STALE_SECONDS``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import IO, Iterator, Mapping

from .errors import InputError

TMP_PREFIX = ".onnx-depth-"
TMP_SUFFIX = ".tmp"
STALE_SECONDS = 15 * 60
_WORK_DIR_PREFIXES = (TMP_PREFIX + "ort-", TMP_PREFIX + "repair-")  # ort_format, latency_db.repair
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

PathLike = "str | os.PathLike[str]"


def current_umask() -> int:
    """The process umask (read from /proc when possible: os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a new output file: 0o666 minus the umask (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_destination(path: PathLike, what: str = "output") -> Path:
    """Refuse a destination that is not (or would not become) a plain regular file we may write."""
    text = os.fspath(path)
    if not text:
        raise InputError(f"{what} path is empty")
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
        raise InputError(f"{text}: {what} path ends with a path separator; give a file name")
    p = Path(text)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InputError(f"{p}: cannot use as {what} ({e.strerror})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise InputError(f"{p}: {what} is a symbolic link; refusing to write through it (give the real path)")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: {what} is {_kind(st.st_mode)}, not a regular file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output directory does not exist (for {what})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: output directory is not writable (for {what})")
    return p


def _identity(path: PathLike) -> tuple[str, tuple[int, int] | None]:
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(path)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when a and b name one file (same real path, or same device and inode)."""
    ra, ia = _identity(a)
    rb, ib = _identity(b)
    return ra == rb or (ia is not None and ia == ib)


def check_distinct(outputs: Mapping[str, "PathLike | None"], inputs: Mapping[str, "PathLike | None"] | None = None) -> None:
    """Refuse when two outputs are one file, or an output is one of the inputs.

    `outputs` / `inputs`: {what (e.g. "--report"): path or None (not given)}.
    """
    outs = [(k, v) for k, v in outputs.items() if v is not None]
    ins = [(k, v) for k, v in (inputs or {}).items() if v is not None]
    for i, (ka, a) in enumerate(outs):
        for kb, b in ins:
            if same_file(a, b):
                raise InputError(f"{os.fspath(a)}: {ka} is the same file as {kb}; refusing to overwrite {kb}")
        for kb, b in outs[i + 1:]:
            if same_file(a, b):
                raise InputError(f"{os.fspath(a)}: {ka} and {kb} are the same file; give different paths")


def clean_stale(directory: PathLike, max_age: float = STALE_SECONDS) -> int:
    """Remove our own temporary files (``.onnx-depth-*.tmp``, regular files we own) and work
    folders (``.onnx-depth-ort-*``, ``.onnx-depth-repair-*``) older than `max_age` seconds from
    `directory`; returns how many were removed. Errors are ignored."""
    removed = 0
    now = time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    uid = os.getuid() if hasattr(os, "getuid") else None
    for name in names:
        ours_file = name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)
        ours_dir = name.startswith(_WORK_DIR_PREFIXES)
        if not (ours_file or ours_dir):
            continue
        full = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            st = os.lstat(full)
            if (uid is not None and st.st_uid != uid) or now - st.st_mtime <= max_age:
                continue
            if ours_file and stat.S_ISREG(st.st_mode):
                os.unlink(full)
                removed += 1
            elif ours_dir and stat.S_ISDIR(st.st_mode):
                shutil.rmtree(full, ignore_errors=True)
                removed += 1
    return removed


def _new_temp(directory: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(8)}{TMP_SUFFIX}"
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp  # the kernel applies the umask
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"{directory}: cannot create a file there ({e.strerror})") from None
    raise InputError(f"{directory}: cannot create a temporary file")  # pragma: no cover


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicGroup:
    """Several files that appear together (a model and its external data): each is staged in a
    temporary file; `commit` renames them all, the last one named first in `add` order reversed
    (so the model appears after its data)."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, str]] = []

    @contextlib.contextmanager
    def open(self, path: PathLike, mode: str = "wb", what: str = "output", **kw) -> Iterator[IO]:
        dest = check_destination(path, what)
        directory = dest.parent if str(dest.parent) else Path(".")
        clean_stale(directory)
        fd, tmp = _new_temp(directory)
        self._staged.append((tmp, dest, what))
        try:
            f = os.fdopen(fd, mode, **kw)
        except BaseException:
            os.close(fd)
            raise
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise InputError(f"{dest}: cannot write {what} ({e.strerror or e})") from None

    def commit(self) -> None:
        for tmp, dest, what in reversed(self._staged):
            check_destination(dest, what)  # re-checked right before the rename
            try:
                os.replace(tmp, dest)
            except OSError as e:
                raise InputError(f"{dest}: cannot write {what} ({e.strerror or e})") from None
        for directory in {dest.parent for _, dest, _ in self._staged}:
            _fsync_dir(directory if str(directory) else Path("."))
        self._staged = []

    def discard(self) -> None:
        for tmp, _, _ in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged = []

    def __enter__(self) -> "AtomicGroup":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", what: str = "output", **kw) -> Iterator[IO]:
    """Open `path` for writing atomically (see the module docstring); it appears on success only."""
    with AtomicGroup() as group, group.open(path, mode, what, **kw) as f:
        yield f


def write_bytes(path: PathLike, data: bytes, what: str = "output") -> Path:
    with atomic_open(path, "wb", what) as f:
        f.write(data)
    return Path(path)


def write_text(path: PathLike, text: str, what: str = "output", encoding: str = "utf-8", newline: str | None = None) -> Path:
    with atomic_open(path, "w", what, encoding=encoding, newline=newline) as f:
        f.write(text)
    return Path(path)



def check_directory(path: PathLike, what: str = "output directory") -> Path:
    """An output folder: an existing writable directory, or a path whose nearest existing
    ancestor is a writable directory (it will be created)."""
    text = os.fspath(path)
    if not text:
        raise InputError(f"{what} path is empty")
    p = Path(text)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise InputError(f"{p}: {what} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"{p}: {what} is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: cannot create {what} {p} there (not a writable directory)")
    return p
