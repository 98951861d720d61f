"""Task images: fetched from Label Studio or allow-listed hosts only, pinned to the address checked.

The URL policy, parsed once (:func:`ImageLoader.target`): a task's image reference is normalised and
parsed by this module only; the request then goes to exactly the scheme, host, port and path that
were checked, at the IP address resolved once and checked (urllib3 connects to that address and
sends the checked name as Host header and TLS server name), so no second parser and no second DNS
answer can send it elsewhere. Accepted:

- Label Studio's own files: ``/data/upload/...``, ``/data/local-files/?d=...``, ``/storage-data/...``,
  relative or on LABEL_STUDIO_URL's exact origin (scheme, host, port). Only these get the API token.
- ``http(s)`` URLs whose host is on ALC_IMAGE_ALLOWED_HOSTS and resolves only to public addresses.

Refused before any connection: backslashes, control characters, credentials in the URL, path
segments that climb (``..``, also percent-encoded), encoded slashes, other schemes, ports out of
range, hosts that are not plain DNS names or IP literals. No redirects are followed.

Every per-image failure is an :class:`ImageError` (a per-task error, never a failed request or
retrain). Decoding is bounded: at most ALC_IMAGE_MAX_PIXELS pixels are decoded (JPEGs are decoded at
a reduced scale by Pillow's ``draft``, others are refused from their header before decoding).
Decoded images are cached on disk per content hash, at up to CACHE_SIDE px (an encoder's input
size, not only 32 px); writes are atomic (unique temporary file + rename), corrupt entries replaced.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import logging
import os
import re
import socket
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote, unquote, urlsplit

import certifi
import numpy as np
import urllib3
from PIL import Image

from backend.settings import Settings
from scoring.progress import progress as report_progress

log = logging.getLogger(__name__)

LABEL_STUDIO_PATHS = ("/data/upload/", "/data/local-files/", "/storage-data/")
CHUNK = 64 * 1024
CACHE_SIDE = 256  # decoded images are cached with their longer side at most this (or the size asked, if larger)
MAX_URL_CHARS = 4096
SHOW_PROGRESS_FROM = 100  # images: a fetch this big tells its progress (a bar, or lines in a log); one task's does not
_DNS_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # kept as they are; everything else (spaces, non-ASCII) is percent-encoded
_QUERY_SAFE = _PATH_SAFE + "?"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Pillow warns above its own pixel limit when it reads a header; this module enforces ALC_IMAGE_MAX_PIXELS itself
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

Resolver = Callable[[str, int], list[str]]


class ImageError(ValueError):
    """This task's image cannot be used; the message says why (shown per task, never a 500)."""


@dataclass(frozen=True)
class Target:
    """Where one image request goes: checked once, used as is."""

    scheme: str
    host: str  # the name checked (Host header, TLS server name)
    port: int
    address: str  # the IP address resolved once, checked, and connected to
    path: str  # path and query, normalised
    label_studio: bool  # on Label Studio's origin and file paths: the only requests with the token

    @property
    def url(self) -> str:
        """The cache key and what error messages show."""
        return f"{self.scheme}://{_host_header(self.host, self.port, self.scheme)}{self.path}"


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the name resolves to, in the resolver's order (one DNS answer per request)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise ImageError(f"image host {host!r} does not resolve") from None
    return list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))


@dataclass
class ImageLoader:
    label_studio_url: str | None
    api_key: str | None
    allowed_hosts: list[str] = field(default_factory=list)
    max_bytes: int = 10_000_000
    timeout: float = 10.0
    size: int = 32
    cache_dir: Path | None = None
    max_pixels: int = 16_000_000
    workers: int = 4
    resolver: Resolver = resolve_host

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
            cache_dir=settings.data_home / "image-cache",
            max_pixels=settings.image_max_pixels,
            workers=settings.image_workers,
        )

    def __post_init__(self) -> None:
        self.allowed_hosts = [h.lower().rstrip(".") for h in self.allowed_hosts]
        self._ls = _origin(self.label_studio_url) if self.label_studio_url else None
        self._pools: dict[tuple, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    # -- the URL policy -------------------------------------------------------------------------

    def target(self, ref: object) -> Target:
        """Normalise, parse and check an image reference once; ImageError if it must not be fetched."""
        ref = _normalised(ref)
        if ref.startswith("/") and not ref.startswith("//"):
            if self._ls is None:
                raise ImageError("a Label Studio image needs LABEL_STUDIO_URL to be set")
            scheme, host, port, prefix = self._ls
            rel = urlsplit(ref)
            path, query = prefix + rel.path, rel.query
        else:
            try:
                parts = urlsplit(ref)
                port = parts.port
            except ValueError as exc:
                raise ImageError(f"image URL does not parse ({exc})") from None
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https"):
                raise ImageError(f"image URL scheme {scheme or '(none)'!r} is not fetched (only http(s))")
            if "@" in parts.netloc:
                raise ImageError("image URL carries credentials (user@host); not fetched")
            host = _checked_host(parts.hostname)
            port = port if port is not None else _default_port(scheme)
            if port == 0:
                raise ImageError("image URL port 0 is not a port")
            path, query = parts.path, parts.query
        path = _checked_path(path)
        full = path + (f"?{quote(query, safe=_QUERY_SAFE)}" if query else "")
        on_ls = self._ls is not None and (scheme, host, port) == self._ls[:3]
        if on_ls:
            if not path.startswith(tuple(self._ls[3] + p for p in LABEL_STUDIO_PATHS)):
                where = "relative image path" if ref.startswith("/") else "image URL on Label Studio's host"
                raise ImageError(f"{where} {path[:80]!r} is not a Label Studio upload or local file "
                                 f"({', '.join(LABEL_STUDIO_PATHS)})")
            address = self.resolver(host, port)[0]
        elif ref.startswith("/"):
            raise ImageError(f"relative image path {ref[:80]!r} is not a Label Studio upload or local file")
        else:
            if host not in self.allowed_hosts:
                raise ImageError(f"image host {host!r} is not on ALC_IMAGE_ALLOWED_HOSTS")
            address = _public_address(host, self.resolver(host, port))
        return Target(scheme, host, port, address, full, on_ls)

    # -- fetching and decoding ------------------------------------------------------------------

    def fetch(self, target: Target) -> bytes:
        """The body of one image request (no redirects, size and time limits)."""
        headers = {"Host": _host_header(target.host, target.port, target.scheme), "Accept": "image/*, */*;q=0.8"}
        if target.label_studio and self.api_key:
            headers["Authorization"] = f"Token {self.api_key}"
        deadline = time.monotonic() + self.timeout
        try:
            response = self._pool(target).urlopen(
                "GET", target.path, headers=headers, redirect=False, retries=False, preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout), assert_same_host=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ImageError(f"image could not be fetched: {type(exc).__name__}") from None
        try:
            if 300 <= response.status < 400:
                raise ImageError(f"image URL redirects ({response.status}); redirects are not followed")
            if response.status != 200:
                raise ImageError(f"image request returned HTTP {response.status}")
            declared = response.headers.get("Content-Length")
            if declared is not None:
                if not declared.strip().isdigit() or not declared.isascii():
                    raise ImageError(f"image response has a bad Content-Length ({declared[:20]!r})")
                if int(declared) > self.max_bytes:
                    raise ImageError(f"image is {int(declared)} bytes, over the limit of {self.max_bytes}")
            body = bytearray()
            # read1 returns whatever has arrived, so a slow server cannot hold the download past the
            # deadline by more than one socket read; decoded (gunzipped) bytes count against the limit
            while chunk := response.read1(CHUNK, decode_content=True):
                body.extend(chunk)
                if len(body) > self.max_bytes:
                    raise ImageError(f"image is over the limit of {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise ImageError(f"image download took longer than {self.timeout} s")
            return bytes(body)
        except urllib3.exceptions.HTTPError as exc:
            raise ImageError(f"image could not be fetched: {type(exc).__name__}") from None
        finally:
            response.close()  # never hand a half-read connection back to the pool
            response.release_conn()

    def decode(self, raw: bytes, side: int = CACHE_SIDE) -> np.ndarray:
        """RGB uint8 (h, w, 3), longer side at most ``side``; never decodes more than ``max_pixels``."""
        try:
            with Image.open(io.BytesIO(raw)) as img:
                img.draft("RGB", (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that suffices
                width, height = img.size
                if width * height > self.max_pixels:
                    raise ImageError(
                        f"image is {width} x {height} px, over the limit of {self.max_pixels} pixels (ALC_IMAGE_MAX_PIXELS)"
                    )
                img = img.convert("RGB")
                img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
                return np.asarray(img, dtype=np.uint8).copy()
        except ImageError:
            raise
        except Exception as exc:  # Pillow raises many kinds for hostile files: all are this task's problem
            raise ImageError(f"image could not be decoded: {type(exc).__name__}: {str(exc)[:120]}") from None

    def load(self, ref: object, size: int | None = None) -> np.ndarray:
        """(size, size, 3) uint8, from the disk cache when this URL was loaded before; ImageError for any failure."""
        size = size or self.size
        with _as_image_error():
            return _square(self._cached_or_fetched(self.target(ref), max(CACHE_SIDE, size)), size)

    def load_many(
        self, refs: list, size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, dict[int, str]]:
        """All images as (N, size, size, 3), fetched by a bounded pool; a failure of any kind becomes
        ``errors[i]`` (its image stays black) and never stops the others. ``progress(done)`` after each."""
        size = size or self.size
        out = np.zeros((len(refs), size, size, 3), dtype=np.uint8)
        errors: dict[int, str] = {}

        def fetch(i: int) -> None:  # written in place: 100,000 futures holding their images would double the memory
            out[i] = self.load(refs[i], size)

        shown = report_progress(f"fetching {len(refs)} images", len(refs)) if len(refs) >= SHOW_PROGRESS_FROM \
            else nullcontext(lambda n=1: None)
        with ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="alc-image") as pool, shown as advance:
            futures = {pool.submit(fetch, i): i for i in range(len(refs))}
            for done, future in enumerate(as_completed(futures), 1):
                try:
                    future.result()
                except ImageError as exc:
                    errors[futures[future]] = str(exc)
                advance(1)
                if progress is not None:
                    progress(done)
        return out, errors

    def load_vector(self, ref: object) -> np.ndarray:
        """A float vector from a ``.npy`` file at ``ref`` (the team's own embeddings or probabilities), fetched under
        the same URL policy and size limit as an image; never unpickled. ImageError for any failure."""
        with _as_image_error():
            raw = self.fetch(self.target(ref))
            try:
                vector = np.load(io.BytesIO(raw), allow_pickle=False)
            except Exception as exc:  # not an .npy, or an object array (which would need pickle)
                raise ImageError(f"not a numeric .npy file: {type(exc).__name__}: {str(exc)[:80]}") from None
            if not np.issubdtype(vector.dtype, np.number):
                raise ImageError(f"the .npy holds {vector.dtype}, not numbers")
            return np.asarray(vector, dtype=np.float64).reshape(-1)

    @staticmethod
    def text_card(text: object, size: int) -> bytes:
        """PNG bytes of a size x size card showing the start of a text: where the dashboard shows an image's
        thumbnail, a text project shows its snippet (nothing is fetched)."""
        from PIL import ImageDraw

        if not isinstance(size, int) or not 1 <= size <= 1024:
            raise ImageError(f"thumbnail size must be an integer in [1, 1024], got {size!r}")
        words = " ".join(str(text or "").split())[:400]
        card = Image.new("RGB", (size, size), (250, 250, 246))
        draw = ImageDraw.Draw(card)
        per_line, lines, line = max(4, size // 6), [], ""
        for word in words.split(" "):
            if len(line) + len(word) + 1 > per_line and line:
                lines.append(line)
                line = ""
            line = f"{line} {word}".strip()[:per_line]
        lines.append(line)
        for row, content in enumerate(lines[: max(1, (size - 4) // 11)]):
            draw.text((3, 2 + 11 * row), content, fill=(30, 30, 30))
        out = io.BytesIO()
        card.save(out, format="PNG")
        return out.getvalue()

    def thumbnail(self, ref: object, size: int) -> bytes:
        """PNG bytes of the image fitted into size x size (aspect kept), for the dashboard."""
        if not isinstance(size, int) or not 1 <= size <= 1024:
            raise ImageError(f"thumbnail size must be an integer in [1, 1024], got {size!r}")
        with _as_image_error():
            image = Image.fromarray(self._cached_or_fetched(self.target(ref), max(CACHE_SIDE, size)))
            image.thumbnail((size, size), Image.Resampling.BILINEAR)
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()

    # -- internals ------------------------------------------------------------------------------

    def _pool(self, target: Target) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, target.host, target.address, target.port)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if target.scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        target.address, target.port, maxsize=max(1, self.workers), server_hostname=target.host,
                        assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
                    )
                else:
                    pool = urllib3.HTTPConnectionPool(target.address, target.port, maxsize=max(1, self.workers))
                self._pools[key] = pool
            return pool

    def _cached_or_fetched(self, target: Target, side: int) -> np.ndarray:
        """The decoded image (longer side <= side): URL -> content hash -> pixels, each a cache file."""
        if self.cache_dir is None:
            return self.decode(self.fetch(target), side)
        url_key = hashlib.sha256(target.url.encode()).hexdigest()
        ref_file = self.cache_dir / "refs" / url_key[:2] / url_key
        content = _read_text(ref_file)
        if content is not None and _HEX64.fullmatch(content):
            cached = _read_pixels(self._pixels_path(content, side))
            if cached is not None:
                return cached
        raw = self.fetch(target)
        content = hashlib.sha256(raw).hexdigest()
        pixels = self._pixels_path(content, side)
        image = _read_pixels(pixels)
        if image is None:
            image = self.decode(raw, side)
            buffer = io.BytesIO()
            np.save(buffer, image, allow_pickle=False)
            _cache_write(pixels, buffer.getvalue())
        _cache_write(ref_file, content.encode())
        return image

    def _pixels_path(self, content: str, side: int) -> Path:
        return self.cache_dir / "pixels" / content[:2] / f"{content}-{side}.npy"  # type: ignore[operator]


# --- helpers -----------------------------------------------------------------------------------


def _normalised(ref: object) -> str:
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError("the task has no image URL")
    ref = ref.strip()
    if len(ref) > MAX_URL_CHARS:
        raise ImageError(f"image URL is longer than {MAX_URL_CHARS} characters")
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        raise ImageError("image URL is not valid text (lone surrogate)") from None
    if "\\" in ref:
        raise ImageError("image URL contains a backslash; not fetched (parsers disagree on it)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in ref):
        raise ImageError("image URL contains control characters; not fetched")
    return ref


def _origin(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of LABEL_STUDIO_URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, _checked_host(parts.hostname), parts.port or _default_port(scheme), parts.path.rstrip("/")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _checked_host(host: str | None) -> str:
    """A plain DNS name or an IP literal, lower case, without a trailing dot."""
    host = (host or "").lower().rstrip(".")
    if not host:
        raise ImageError("image URL has no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host.isascii() or not _DNS_NAME.fullmatch(host):
        raise ImageError(f"image host {host[:80]!r} is not a plain DNS name or IP address")
    return host


def _checked_path(path: str) -> str:
    """The path as it will be sent: no climbing segments, no encoded slashes, spaces and non-ASCII escaped."""
    path = path or "/"
    if path.startswith("//"):
        raise ImageError("image URL path starts with '//'; not fetched")
    decoded = unquote(path)
    if decoded.count("/") != path.count("/") or "\\" in decoded:
        raise ImageError("image URL path holds an encoded slash or backslash; not fetched")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise ImageError("image URL path climbs ('.' or '..' segments); not fetched")
    return quote(path, safe=_PATH_SAFE)


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == _default_port(scheme) else f"{shown}:{port}"


def _public_address(host: str, addresses: list[str]) -> str:
    """The address to connect to: the first one, if every address the name resolved to is public."""
    if not addresses:
        raise ImageError(f"image host {host!r} does not resolve")
    for text in addresses:
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            raise ImageError(f"image host {host!r} resolves to a non-public address ({address})")
    return addresses[0]


def _square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_pixels(path: Path) -> np.ndarray | None:
    """A cached image, or None (missing, or corrupt: then removed so it is written again)."""
    try:
        image = np.load(path, allow_pickle=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception:
        image = None
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        log.warning("image cache entry %s is corrupt; replacing it", path)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    return image


@contextmanager
def _as_image_error() -> Iterator[None]:
    """Any failure while loading one image is that image's ImageError (a bug or a surprise included)."""
    try:
        yield
    except ImageError:
        raise
    except Exception as exc:
        log.warning("image load failed unexpectedly", exc_info=True)
        raise ImageError(f"image could not be loaded: {type(exc).__name__}") from None


def _cache_write(path: Path, data: bytes) -> None:
    """The cache is an optimisation: a full disk or a read-only folder costs a download, not the image."""
    try:
        _atomic_write(path, data)
    except OSError as exc:
        log.warning("image cache entry %s not written: %s", path, exc)


def _atomic_write(path: Path, data: bytes) -> None:
    """A unique temporary file in the same folder, then one rename: concurrent writers never collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
