"""Task images: fetched from Label Studio or allow-listed hosts only, with size and time limits.

Accepted: Label Studio's own files (``/data/upload/...``, ``/data/local-files/?d=...``, or any URL on
LABEL_STUDIO_URL's host), sent with the API token; ``http(s)`` URLs whose host is on
ALC_IMAGE_ALLOWED_HOSTS and resolves to a public address. Nothing else is fetched: no other hosts, no
local or private addresses on behalf of a task, no redirects, no file:// or cloud-storage schemes.
Images are decoded with Pillow to a fixed-size RGB uint8 array, so every selector sees (H, W, 3).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
import urllib3
from PIL import Image, UnidentifiedImageError

from backend.settings import Settings

LABEL_STUDIO_PATHS = ("/data/upload/", "/data/local-files/", "/storage-data/")
CHUNK = 64 * 1024


class ImageError(ValueError):
    """This task's image cannot be used; the message says why (shown per task, never a 500)."""


@dataclass
class ImageLoader:
    label_studio_url: str | None
    api_key: str | None
    allowed_hosts: list[str] = field(default_factory=list)
    max_bytes: int = 10_000_000
    timeout: float = 10.0
    size: int = 32
    cache_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "ImageLoader":
        key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None
        return cls(
            label_studio_url=settings.label_studio_url,
            api_key=key,
            allowed_hosts=list(settings.image_allowed_hosts),
            max_bytes=settings.image_max_bytes,
            timeout=settings.image_timeout,
            size=settings.image_size,
            cache_dir=settings.data_home / "image-cache" / str(settings.image_size),
        )

    def __post_init__(self) -> None:
        self._session = requests.Session()

    # -- what may be fetched ------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[str, dict[str, str]]:
        """(absolute URL, headers) for an image reference, or ImageError if it must not be fetched."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError("the task has no image URL")
        ref = ref.strip()
        ls = urlsplit(self.label_studio_url) if self.label_studio_url else None
        if ref.startswith("/"):
            if not ref.startswith(LABEL_STUDIO_PATHS):
                raise ImageError(f"relative image path {ref[:80]!r} is not a Label Studio upload or local file")
            if ls is None:
                raise ImageError("a Label Studio image needs LABEL_STUDIO_URL to be set")
            return urljoin(self.label_studio_url + "/", ref.lstrip("/")), self._ls_headers()
        parts = urlsplit(ref)
        if parts.scheme not in ("http", "https"):
            raise ImageError(f"image URL scheme {parts.scheme or '(none)'!r} is not fetched (only http(s))")
        host = (parts.hostname or "").lower()
        if ls is not None and host == (ls.hostname or "").lower() and parts.port == ls.port:
            return ref, self._ls_headers()
        if host not in self.allowed_hosts:
            raise ImageError(f"image host {host!r} is not on ALC_IMAGE_ALLOWED_HOSTS")
        _require_public(host)
        return ref, {}

    def _ls_headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.api_key}"} if self.api_key else {}

    # -- fetching and decoding ----------------------------------------------------------------

    def fetch(self, ref: str) -> bytes:
        url, headers = self.resolve(ref)
        deadline = time.monotonic() + self.timeout
        try:
            with self._session.get(
                url, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
            ) as response:
                if response.is_redirect:
                    raise ImageError(f"image URL redirects ({response.status_code}); redirects are not followed")
                if response.status_code != 200:
                    raise ImageError(f"image request returned HTTP {response.status_code}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > self.max_bytes:
                    raise ImageError(f"image is {declared} bytes, over the limit of {self.max_bytes}")
                body = bytearray()
                # read1 returns whatever has arrived (iter_content would wait for a full chunk), so a slow
                # server cannot hold the download past the deadline by more than one socket read
                while chunk := response.raw.read1(CHUNK, decode_content=True):
                    body.extend(chunk)
                    if len(body) > self.max_bytes:
                        raise ImageError(f"image is over the limit of {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise ImageError(f"image download took longer than {self.timeout} s")
                return bytes(body)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise ImageError(f"image could not be fetched: {type(exc).__name__}") from None

    def decode(self, raw: bytes) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(raw)) as img:
                img = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
            raise ImageError(f"image could not be decoded: {exc}") from None

    def load(self, ref: str) -> np.ndarray:
        """(size, size, 3) uint8; cached on disk by URL so a retrain does not download everything again."""
        cached = self._cache_path(ref)
        if cached is not None and cached.is_file():
            return np.load(cached)
        array = self.decode(self.fetch(ref))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp.npy")
            np.save(tmp, array)
            tmp.replace(cached)
        return array

    def load_many(self, refs: list[str], progress=None) -> tuple[np.ndarray, dict[int, str]]:
        """All images as (N, size, size, 3); failures become black images, listed in ``errors`` by index."""
        out = np.zeros((len(refs), self.size, self.size, 3), dtype=np.uint8)
        errors: dict[int, str] = {}
        for i, ref in enumerate(refs):
            try:
                out[i] = self.load(ref)
            except ImageError as exc:
                errors[i] = str(exc)
            if progress is not None:
                progress(i + 1)
        return out, errors

    def _cache_path(self, ref: str) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(ref.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.npy"


def _require_public(host: str) -> None:
    """An allow-listed host must resolve only to public addresses (no loopback, private, link-local)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ImageError(f"image host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise ImageError(f"image host {host!r} resolves to a non-public address ({address})")
