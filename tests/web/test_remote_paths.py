"""read_image_path: confined to the root, plain paths only, regular files only, never blocks."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from service.errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge, ServiceError
from service.web import remote_paths
from service.web.remote_paths import MAX_PATH_CHARS, check_path_text, read_image_path

IMAGE = b"\x89PNG fake image bytes"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    (base / "a.png").write_bytes(IMAGE)
    (base / "sub" / "b.png").write_bytes(IMAGE)
    (tmp_path / "outside.png").write_bytes(IMAGE)
    return base


def error(root: Path, path, max_bytes: int = 1000) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        read_image_path(root, path, max_bytes)
    return info.value


def test_reads_relative_absolute_and_inner_dotdot_paths(root):
    for path in ("a.png", "sub/b.png", str(root / "a.png"), "sub/../a.png", "./sub/b.png"):
        assert read_image_path(root, path, 1000) == IMAGE


def test_a_root_reached_through_a_symlink_works(root, tmp_path):
    (tmp_path / "link-to-root").symlink_to(root)
    assert read_image_path(tmp_path / "link-to-root", "a.png", 1000) == IMAGE
    assert read_image_path(root, str(tmp_path / "link-to-root" / "a.png"), 1000) == IMAGE


def test_no_root_means_disabled(root):
    assert error(None, "a.png").code == "remote_path_disabled"


@pytest.mark.parametrize("path", ["../outside.png", "sub/../../outside.png", "/etc/passwd",
                                  "/dev/zero", "../no-such.png", "/no/such/dir/x.png"])
def test_escapes_are_403_whether_or_not_the_target_exists(root, path):
    exc = error(root, path)
    assert isinstance(exc, Forbidden) and exc.code == "path_forbidden"
    assert exc.message == f"The path {path!r} is outside the images root."


def test_symlinks_out_are_403(root, tmp_path):
    (root / "out.png").symlink_to(tmp_path / "outside.png")
    (root / "dev.png").symlink_to("/dev/zero")
    (root / "gone.png").symlink_to(tmp_path / "gone.png")
    (root / "subout").symlink_to(tmp_path)
    for path in ("out.png", "dev.png", "gone.png", "subout/outside.png"):
        assert error(root, path).code == "path_forbidden", path


def test_symlinks_inside_the_root_are_followed(root):
    (root / "alias.png").symlink_to(root / "sub" / "b.png")
    assert read_image_path(root, "alias.png", 1000) == IMAGE


@pytest.mark.parametrize("path", [
    "%2e%2e%2fetc%2fpasswd", "%252e%252e%252f", "a%2Epng", "a.png\x00.txt", "a\n.png",
    "\x7fa.png", "\x85a.png", "\ud800.png", "", "x" * (MAX_PATH_CHARS + 1), None, 7, ["a.png"],
])
def test_paths_that_are_not_plain_text_are_400(root, path):
    exc = error(root, path)
    assert isinstance(exc, InvalidInput) and exc.code == "bad_path"


def test_percent_without_hex_digits_is_a_plain_name(root):
    (root / "100%.png").write_bytes(IMAGE)
    check_path_text("100%.png")
    assert read_image_path(root, "100%.png", 1000) == IMAGE


def test_over_long_names_and_symlink_loops_are_400(root):
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")
    for path in ("x" * 300 + ".png", "loop.png", "ping/a.png"):
        assert error(root, path).code == "bad_path", path


def test_missing_files_are_404(root):
    for path in ("nope.png", "sub/nope.png", "nodir/a.png", "a.png/b.png"):
        exc = error(root, path)
        assert isinstance(exc, NotFound) and exc.code == "image_not_found", path


def test_directories_fifos_and_sockets_are_400_and_never_opened(root, monkeypatch):
    os.mkfifo(root / "pipe.png")
    (root / "to-pipe.png").symlink_to(root / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.png"))
    monkeypatch.setattr(remote_paths.os, "open", lambda *a, **k: pytest.fail("opened"))
    try:
        for path in ("sub", "sub/", "pipe.png", "to-pipe.png", "sock.png"):
            assert error(root, path).code == "not_a_file", path
    finally:
        sock.close()


def test_a_fifo_swapped_in_after_the_check_does_not_block(root, monkeypatch):
    """Even if the stat said "regular file", the open cannot wait for a writer."""
    os.mkfifo(root / "pipe.png")
    real_lstat = os.lstat
    monkeypatch.setattr(remote_paths.os, "lstat", lambda p: real_lstat(root / "a.png"))
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(error(root, "pipe.png")), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "read_image_path blocked on a FIFO"
    assert outcome[0].code == "not_a_file"


def test_files_over_max_bytes_are_413_without_reading(root, monkeypatch):
    with open(root / "big.png", "wb") as handle:
        handle.truncate(10**9)  # sparse
    monkeypatch.setattr(remote_paths.os, "read", lambda *a: pytest.fail("read"))
    exc = error(root, "big.png", max_bytes=1000)
    assert isinstance(exc, PayloadTooLarge) and exc.code == "image_bytes_too_large"


def test_a_file_that_grows_after_the_check_is_cut_at_max_bytes(root, monkeypatch):
    (root / "grows.png").write_bytes(b"x" * 2000)
    real_fstat, real_lstat = os.fstat, os.lstat
    small = real_lstat(root / "a.png")

    def pretend(info):
        return os.stat_result((info.st_mode, info.st_ino, info.st_dev, info.st_nlink,
                               info.st_uid, info.st_gid, small.st_size, 0, 0, 0))

    monkeypatch.setattr(remote_paths.os, "lstat", lambda p: pretend(real_lstat(p)))
    monkeypatch.setattr(remote_paths.os, "fstat", lambda fd: pretend(real_fstat(fd)))
    assert error(root, "grows.png", max_bytes=1000).code == "image_bytes_too_large"


def test_exactly_max_bytes_is_read(root):
    assert read_image_path(root, "a.png", len(IMAGE)) == IMAGE


def test_a_file_swapped_between_check_and_open_is_refused(root, tmp_path, monkeypatch):
    real_open = os.open

    def swap_then_open(path, flags, *args):
        os.replace(tmp_path / "outside.png", root / "a.png")  # another inode now
        return real_open(path, flags, *args)

    monkeypatch.setattr(remote_paths.os, "open", swap_then_open)
    assert error(root, "a.png").code == "path_forbidden"


def test_unreadable_files_are_403(root, monkeypatch):
    (root / "secret.png").write_bytes(IMAGE)
    (root / "secret.png").chmod(0)
    if os.geteuid() == 0:  # root reads every file: the refusal is injected (as CI runs)
        def refuse(path, flags, *args):
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(remote_paths.os, "open", refuse)
    assert error(root, "secret.png").code == "path_forbidden"
