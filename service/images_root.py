"""Read an image that an internal caller stored on this machine, confined to ``images_root``."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge


def read_image_path(root: Path | None, requested: str, max_bytes: int) -> bytes:
    """The bytes of ``requested`` (relative to ``root``, or absolute inside it).

    Containment is checked on the fully resolved path before anything else, so ``..``
    escapes and symlinks leading out are refused without revealing whether the target exists.
    """
    if root is None:
        raise Forbidden("Reading images by path is disabled on this server (no images_root).",
                        "remote_path_disabled")
    if not isinstance(requested, str) or not requested or "\x00" in requested:
        raise InvalidInput("'path' must be a non-empty string.", "bad_parameter")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, requested))
    if os.path.commonpath([real_root, target]) != real_root:
        raise Forbidden(f"The path {requested!r} is outside the images root.", "path_forbidden")
    try:
        if os.path.getsize(target) > max_bytes:
            raise PayloadTooLarge(f"The file {requested!r} is larger than {max_bytes} bytes.",
                                  "body_too_large")
        with open(target, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"No image at {requested!r} under the images root.", "image_not_found") from None
    except IsADirectoryError:
        raise InvalidInput(f"{requested!r} is a directory, not an image.", "bad_parameter") from None
    except PermissionError:
        raise Forbidden(f"The server may not read {requested!r}.", "path_forbidden") from None
