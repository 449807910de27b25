"""Record images: local files, http(s) URLs (downloaded once into the prunec cache), bytes.

A URL is fetched with the standard library's urllib the first time a build or `check --deep`
needs it, and kept under `<prunec cache>/images/<sha256 of the URL>`; later runs read the
cached copy and work offline. Opening applies the EXIF orientation, as cameras and phones
store portrait photos sideways with an orientation tag.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from prunec.data.record import ImageBytes, ImageRef, ImageURL
from prunec.errors import BuildError

#: Seconds to wait for a server to answer before the network counts as unreachable.
URL_TIMEOUT = 10.0


class ImageProblem(Exception):
    """The image itself is bad (missing file, not an image, HTTP 404): a data error."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class NetworkUnavailable(Exception):
    """A URL could not be fetched because no server answered (offline, DNS, refused)."""


class DataUnavailable(BuildError):
    """Data that needs the network (an image URL, a hub dataset) cannot be fetched now.

    A build error (exit 3), not a spec error: the data may be fine, the machine is offline.
    code: the diagnostic code `check --deep` reports it under.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def offline_mode() -> bool:
    """True when the Hugging Face offline switches are set; prunec honours them for URLs too."""
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def cached_url_path(url: str) -> Path:
    """Where the download of `url` is kept (it may not exist yet)."""
    from prunec.scoring.cache import default_cache_dir

    return default_cache_dir() / "images" / hashlib.sha256(url.encode()).hexdigest()


def fetch(url: str) -> Path:
    """The local copy of `url`, downloaded on first use.

    Raises ImageProblem (E335) when a server answers with an error, NetworkUnavailable when
    none answers within URL_TIMEOUT seconds (or offline mode is on and the copy is absent).
    """
    path = cached_url_path(url)
    if path.is_file():
        return path
    if offline_mode():
        raise NetworkUnavailable("offline mode is on (HF_HUB_OFFLINE) and the image is not cached")
    from prunec import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"prunec/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
            data = response.read()
    except urllib.error.HTTPError as err:  # the server answered: the URL itself is bad
        message = f"cannot download image {url}: HTTP {err.code} {err.reason}"
        raise ImageProblem("E335", message) from err
    except urllib.error.URLError as err:
        raise NetworkUnavailable(str(err.reason)) from err
    except (TimeoutError, OSError, http.client.HTTPException) as err:
        raise NetworkUnavailable(str(err) or type(err).__name__) from err
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _open(ref: ImageRef) -> Any:
    from PIL import Image

    if isinstance(ref, ImageBytes):
        return Image.open(BytesIO(ref.data))
    if isinstance(ref, ImageURL):
        return Image.open(fetch(ref.url))
    if not ref.is_file():
        raise ImageProblem("E328", f"image not found: {ref}")
    return Image.open(ref)


def _unreadable(ref: ImageRef, err: Exception) -> ImageProblem:
    return ImageProblem("E329", f"unreadable image {ref}: {err}")


def verify_image(ref: ImageRef) -> None:
    """Check that `ref` is a readable image without decoding it all (URLs are downloaded).

    Raises ImageProblem or NetworkUnavailable.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with _open(ref) as img:
            img.verify()
    except ImageProblem:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise _unreadable(ref, err) from err
    except Image.DecompressionBombError as err:
        raise _unreadable(ref, err) from err


def open_rgb(ref: ImageRef) -> Any:
    """The image as an RGB PIL image, turned upright by its EXIF orientation tag.

    Raises ImageProblem or NetworkUnavailable.
    """
    from PIL import Image, ImageOps

    try:
        with _open(ref) as img:
            upright = ImageOps.exif_transpose(img)
            return upright.convert("RGB")
    except ImageProblem:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(ref, err) from err


def image_digest(ref: ImageRef, file_digest: Callable[[Path], str]) -> str:
    """sha256 of the image's bytes; URLs are digested from their cached download."""
    if isinstance(ref, ImageBytes):
        return ref.digest
    if isinstance(ref, ImageURL):
        return file_digest(fetch(ref.url))
    return file_digest(ref)
