"""Images: one URL policy (parsed once, pinned address, token only to Label Studio), bounded decoding,
per-image errors, a content-hash cache that survives corruption and concurrency."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from backend.images import ImageError, ImageLoader

KEY = "0123456789abcdef0123456789abcdef01234567"


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def huge_png() -> bytes:
    """A 12,000 x 12,000 PNG of a few KB (1-bit, all black): 432 MB as RGB if decoded in full."""
    out = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(out, format="PNG")
    return out.getvalue()


class _Recorder(BaseHTTPRequestHandler):
    """Records every request; serves ``files`` (path -> (status, headers, body)) or 404."""

    files: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "host": self.headers.get("Host")})
        if self.path == "/data/upload/slow":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"\0" * 64)
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        status, headers, body = self.files.get(self.path, (404, {}, b"missing"))
        if self.path.startswith("/data/upload/") and self.headers.get("Authorization") != f"Token {KEY}":
            status, headers, body = 401, {}, b"no token"
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _serve(handler: type) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def label_studio(tiny300):
    """Plays Label Studio's file host, with a few hostile answers under /data/upload/."""
    class LS(_Recorder):
        files = {f"/data/upload/1/{i}.png": (200, {"Content-Type": "image/png"}, png(tiny300["images"][i])) for i in range(8)}
        seen = []

    LS.files.update({
        "/data/upload/1/copy-of-0.png": LS.files["/data/upload/1/0.png"],
        "/data/upload/redirect": (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b""),
        "/data/upload/big": (200, {}, b"\0" * 200_000),
        "/data/upload/garbage": (200, {}, b"this is not an image"),
        "/data/upload/bad-length": (200, {"Content-Length": "abc"}, b"\x89PNG"),
        "/data/upload/huge.png": (200, {}, huge_png()),
    })
    server, url = _serve(LS)
    yield url, LS
    server.shutdown()
    server.server_close()


@pytest.fixture
def capture():
    """Somewhere a leaked request would land: it must receive nothing."""
    class Capture(_Recorder):
        files = {}
        seen = []

    server, url = _serve(Capture)
    yield url, Capture
    server.shutdown()
    server.server_close()


@pytest.fixture
def loader(label_studio, tmp_path):
    url, _ = label_studio
    return ImageLoader(url, KEY, allowed_hosts=["localhost"], max_bytes=100_000, timeout=1.0, size=16, cache_dir=tmp_path)


def test_label_studio_upload_with_token_decoded_to_fixed_size(loader, label_studio, tiny300):
    _, ls = label_studio
    image = loader.load("/data/upload/1/5.png")
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert ls.seen[-1]["auth"] == f"Token {KEY}"
    source = tiny300["images"][5].astype(float).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(image.astype(float) - source).mean() < 12  # the same picture, downsized
    seen = len(ls.seen)
    assert np.array_equal(loader.load("/data/upload/1/5.png"), image)  # from the disk cache
    assert np.array_equal(loader.load("/data/upload/1/5.png", size=32), tiny300["images"][5])  # full size kept
    assert len(ls.seen) == seen


@pytest.mark.parametrize(
    "ref, message",
    [
        ("", "no image URL"),
        (None, "no image URL"),
        (["/data/upload/1/0.png"], "no image URL"),
        ("/etc/passwd", "not a Label Studio upload or local file"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("s3://bucket/x.png", "scheme 's3'"),
        ("http://example.org/x.png", "not on ALC_IMAGE_ALLOWED_HOSTS"),
        ("http://localhost/x.png", "non-public address"),  # allow-listed, but a local address
        ("http://[::1/x.png", "does not parse"),
        ("http://example.org:99999/x.png", "does not parse"),
        ("http://user:pw@example.org/x.png", "credentials"),
        ("http://exa\u00admple.org/x.png", "not a plain DNS name"),
        ("/data/upload/1/\ud800.png", "lone surrogate"),
        ("/data/upload/1/0.png\r\nX-Injected: 1", "control characters"),
        ("LS/api/projects", "not a Label Studio upload"),  # Label Studio's API is never fetched
        ("/data/upload/../../api/projects", "climbs"),
        ("/data/upload/%2e%2e/%2E%2E/api/projects", "climbs"),
        ("/data/upload/..%2f..%2fapi/projects", "encoded slash"),
        ("LS/data/upload/./../api/projects", "climbs"),
    ],
)
def test_refused_references_never_connect(loader, label_studio, ref, message):
    url, ls = label_studio
    seen = len(ls.seen)
    with pytest.raises(ImageError, match=message):
        loader.load(ref.replace("LS", url) if isinstance(ref, str) else ref)
    assert len(ls.seen) == seen


@pytest.mark.parametrize(
    "ref, message",
    [
        ("/data/upload/redirect", "redirects"),
        ("/data/upload/big", "over the limit"),
        ("/data/upload/garbage", "could not be decoded"),
        ("/data/upload/bad-length", "bad Content-Length"),
        ("/data/upload/huge.png", "12000 x 12000 px, over the limit"),
        ("/data/upload/1/12345.png", "HTTP 404"),
    ],
)
def test_failing_images_give_a_clear_error(loader, ref, message):
    with pytest.raises(ImageError, match=message):
        loader.load(ref)


def test_the_token_goes_to_label_studio_only(label_studio, capture, tmp_path):
    """Backslash, credentials, a rebinding name and climbing paths: the capture server receives nothing,
    and Label Studio gets the token for its file paths only."""
    ls_url, ls = label_studio
    cap_url, cap = capture
    ls_host, cap_host = ls_url.removeprefix("http://"), cap_url.removeprefix("http://")
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public when checked, loopback if asked again
    calls = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers) if host == "rebind.example" else ["127.0.0.1"]

    loader = ImageLoader(ls_url, KEY, allowed_hosts=["rebind.example", "127.0.0.1"], timeout=0.5, size=8,
                         cache_dir=tmp_path, resolver=rebinding)
    port = cap_host.split(":")[1]
    refs = [
        f"http://{cap_host}\\@{ls_host}/data/upload/1/0.png",
        f"http://{cap_host}\\\\@{ls_host}/data/upload/1/0.png",
        f"http://{cap_host}%5C@{ls_host}/data/upload/1/0.png",
        f"http://{ls_host}@{cap_host}/data/upload/1/0.png",
        f"http://{cap_host}/data/upload/1/0.png",  # allow-listed host, loopback address
        f"http://rebind.example:{port}/data/upload/1/0.png",
        f"{ls_url}/data/upload/../../api/projects",
        "/data/upload/%2e%2e/%2e%2e/api/projects",
    ]
    images, errors = loader.load_many(refs)
    assert sorted(errors) == list(range(len(refs)))
    assert cap.seen == []
    assert calls.count("rebind.example") == 1  # resolved once; the connection went to the checked address
    assert not any("api" in r["path"] for r in ls.seen)
    assert all(r["auth"] == f"Token {KEY}" for r in ls.seen)


def test_load_many_records_each_failure_and_loads_the_rest(loader, label_studio):
    url, _ = label_studio
    refs = [
        "/data/upload/1/1.png",
        "http://[::1/x.png",
        f"{url.rsplit(':', 1)[0]}:99999/data/upload/1/1.png",
        "/data/upload/bad-length",
        "/data/upload/huge.png",
        "/data/upload/garbage",
        None,
        "/data/upload/1/2.png",
    ]
    done = []
    images, errors = loader.load_many(refs, size=12, progress=done.append)
    assert images.shape == (8, 12, 12, 3)
    assert sorted(errors) == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(m, str) and m for m in errors.values())
    assert images[0].any() and images[7].any() and not images[1].any()
    assert sorted(done) == list(range(1, 9))


def test_a_corrupt_cache_entry_is_replaced(loader, tmp_path, tiny300):
    first = loader.load("/data/upload/1/3.png", size=32)
    [pixels] = (tmp_path / "pixels").rglob("*.npy")
    pixels.write_bytes(b"\x93NUMPY garbage")
    assert np.array_equal(loader.load("/data/upload/1/3.png", size=32), first)
    assert np.array_equal(np.load(pixels), tiny300["images"][3])  # rewritten, readable again
    [ref] = [p for p in (tmp_path / "refs").rglob("*") if p.is_file()]
    ref.write_text("not a hash")
    assert np.array_equal(loader.load("/data/upload/1/3.png", size=32), first)


def test_the_cache_is_per_content_hash(loader, tmp_path):
    a = loader.load("/data/upload/1/0.png")
    b = loader.load("/data/upload/1/copy-of-0.png")
    assert np.array_equal(a, b)
    assert len(list((tmp_path / "pixels").rglob("*.npy"))) == 1
    assert len([p for p in (tmp_path / "refs").rglob("*") if p.is_file()]) == 2


def test_concurrent_loads_of_a_new_image_all_succeed(label_studio, tmp_path):
    url, _ = label_studio
    results, failures = [], []

    def load() -> None:
        fresh = ImageLoader(url, KEY, size=16, cache_dir=tmp_path)  # like separate work horses
        try:
            results.append(fresh.load("/data/upload/1/4.png"))
        except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
            failures.append(exc)

    for _ in range(5):
        threads = [threading.Thread(target=load) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in tmp_path.rglob("*"):
            if p.is_file() and p.suffix != ".tmp":
                p.unlink()
    assert failures == [] and len(results) == 80
    assert all(np.array_equal(r, results[0]) for r in results)
    assert not list(tmp_path.rglob("*.tmp"))


def test_thumbnail_is_a_png_within_the_size(loader):
    data = loader.thumbnail("/data/upload/1/6.png", 24)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and max(img.size) <= 24
    with pytest.raises(ImageError):
        loader.thumbnail("/etc/passwd", 24)


def test_a_slow_server_cannot_hold_a_download_past_the_time_limit(loader):
    started = time.perf_counter()  # /slow trickles 64 bytes every 0.1 s for 4 s
    with pytest.raises(ImageError, match="longer than 1.0 s"):
        loader.load("/data/upload/slow")
    assert time.perf_counter() - started < 1.5


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    """Peak memory of decoding a 12,000 x 12,000 PNG (432 MB as RGB) in a fresh process."""
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png())
    script = f"""
import json, resource
from pathlib import Path
from backend.images import ImageError, ImageLoader
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    ImageLoader(None, None).decode(Path({str(path)!r}).read_bytes())
    message = None
except ImageError as exc:
    message = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"message": message, "grew_kb": after - before}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "over the limit" in report["message"]
    assert report["grew_kb"] < 50_000, report  # the header is read, the pixels never are


def test_an_unwritable_cache_costs_a_download_not_the_image(label_studio, tmp_path):
    url, _ = label_studio
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    loader = ImageLoader(url, KEY, size=8, cache_dir=blocked)
    assert loader.load("/data/upload/1/2.png").shape == (8, 8, 3)


def test_an_unexpected_failure_is_one_images_error(loader, monkeypatch):
    def boom(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(loader, "decode", boom)
    images, errors = loader.load_many(["/data/upload/1/7.png", "/etc/passwd"])
    assert errors[0] == "image could not be loaded: RuntimeError" and "not a Label Studio" in errors[1]
