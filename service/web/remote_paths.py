"""Read an image that an internal caller stored on this machine, confined to ``images_root``.

Paths are plain relative (or absolute, inside the root) file paths: never URL-encoded, never
holding control characters. Only regular files are read, and never more than ``max_bytes``.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from ..errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge

MAX_PATH_CHARS = 1024
URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the last component
# must not have been swapped for a symlink since it was resolved; O_NOCTTY: a terminal
# device must never become ours. Non-regular files are refused right after the open anyway.
OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
BAD_PATH_ERRNOS = {errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL}


def read_image_path(root: Path | None, requested: str, max_bytes: int) -> bytes:
    """The bytes of ``requested`` (relative to ``root``, or absolute inside it).

    Containment is checked on the fully resolved path before anything else, so ``..``
    escapes and symlinks leading out are refused without revealing whether the target exists.
    """
    if root is None:
        raise Forbidden("Reading images by path is disabled on this server (no images_root).",
                        "remote_path_disabled")
    check_path_text(requested)
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, requested))
    if not _inside(real_root, target):
        raise _outside(requested)
    before = _stat_regular(target, requested, max_bytes)  # refuse FIFOs, devices... unopened
    fd = _open(target, requested)
    try:
        _check_same_file(fd, before, real_root, requested, max_bytes)
        return _read_at_most(fd, requested, max_bytes)
    finally:
        os.close(fd)


def check_path_text(requested: object) -> None:
    """400 unless ``requested`` is a plain path: no escapes, control characters or surrogates."""
    if not isinstance(requested, str) or not requested:
        raise InvalidInput("'path' must be a non-empty string.", "bad_path")
    if len(requested) > MAX_PATH_CHARS:
        raise InvalidInput(f"'path' is longer than {MAX_PATH_CHARS} characters.", "bad_path")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in requested):
        raise InvalidInput("'path' holds a NUL or other control character.", "bad_path")
    if URL_ESCAPE.search(requested):  # %2e%2e%2f, and %252e... (double-encoded) alike
        raise InvalidInput(f"'path' {_shown(requested)} holds a %-escape; send the plain path, "
                           "not a URL-encoded one.", "bad_path")
    try:
        requested.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        raise InvalidInput("'path' is not valid Unicode text.", "bad_path") from None


def _inside(real_root: str, target: str) -> bool:
    return os.path.commonpath([real_root, target]) == real_root


def _stat_regular(target: str, requested: str, max_bytes: int) -> os.stat_result:
    """The file's stat, if it is a regular file no larger than ``max_bytes``."""
    try:
        info = os.lstat(target)  # resolved already: a link here is a swap since realpath
    except OSError as exc:
        raise _os_error(exc, requested) from None
    _check_regular(info, requested, max_bytes)
    return info


def _open(target: str, requested: str) -> int:
    try:
        return os.open(target, OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(exc, requested) from None


def _check_same_file(fd: int, before: os.stat_result, real_root: str, requested: str,
                     max_bytes: int) -> None:
    """The opened file is still the regular file that was checked, still inside the root."""
    info = os.fstat(fd)
    _check_regular(info, requested, max_bytes)
    if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
        raise _outside(requested)
    try:  # a directory on the way may have become a symlink between realpath and open
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc: the inode check above is what we have
    if not _inside(real_root, opened):
        raise _outside(requested)


def _check_regular(info: os.stat_result, requested: str, max_bytes: int) -> None:
    if stat.S_ISLNK(info.st_mode):  # realpath stops at a symlink loop (or it was swapped in)
        raise _unresolvable(requested)
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise _not_a_file(requested, kind)
    if info.st_size > max_bytes:
        raise _too_large(requested, max_bytes)


def _read_at_most(fd: int, requested: str, max_bytes: int) -> bytes:
    chunks, left = [], max_bytes + 1  # one byte more tells a file that grew since fstat
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise _too_large(requested, max_bytes)
    return b"".join(chunks)


def _os_error(exc: OSError, requested: str) -> Exception:
    """The client's error for a failed stat or open; anything else is the server's."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return NotFound(f"No image at {_shown(requested)} under the images root.",
                        "image_not_found")
    if isinstance(exc, PermissionError):
        return Forbidden(f"The server may not read {_shown(requested)}.", "path_forbidden")
    if exc.errno in BAD_PATH_ERRNOS:  # symlink loop, over-long name
        return _unresolvable(requested)
    if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket, or a device without a driver
        return _not_a_file(requested, "not a regular file")
    return exc


def _unresolvable(requested: str) -> InvalidInput:
    return InvalidInput(f"{_shown(requested)} cannot be resolved to a file.", "bad_path")


def _not_a_file(requested: str, kind: str) -> InvalidInput:
    return InvalidInput(f"{_shown(requested)} is {kind}; only image files are read.",
                        "not_a_file")


def _outside(requested: str) -> Forbidden:
    # The same answer whether or not the target exists: nothing outside the root is probed.
    return Forbidden(f"The path {_shown(requested)} is outside the images root.",
                     "path_forbidden")


def _too_large(requested: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file {_shown(requested)} is larger than {max_bytes} bytes, "
                           "the most one image may hold.", "image_bytes_too_large")


def _shown(requested: str) -> str:
    """The path as quoted in messages: repr (escapes shown), cut to a readable length."""
    return repr(requested if len(requested) <= 200 else requested[:200] + "...")
