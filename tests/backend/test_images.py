"""Images: only Label Studio's files and allow-listed public hosts, with size and time limits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from backend.images import ImageError, ImageLoader


@pytest.fixture
def loader(image_server, tmp_path):
    url, _ = image_server
    key = "0123456789abcdef0123456789abcdef01234567"
    return ImageLoader(url, key, allowed_hosts=["localhost"], max_bytes=100_000, timeout=1.0, size=16, cache_dir=tmp_path)


def test_label_studio_upload_with_token_decoded_to_fixed_size(loader, image_server, tiny300):
    _, handler = image_server
    image = loader.load("/data/upload/1/5.png")
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert handler.requests_seen[-1]["auth"].startswith("Token ")
    # the same picture as the source, downsized
    source = tiny300["images"][5].astype(float).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(image.astype(float) - source).mean() < 12
    seen = len(handler.requests_seen)
    assert np.array_equal(loader.load("/data/upload/1/5.png"), image)  # second time from the disk cache
    assert len(handler.requests_seen) == seen


@pytest.mark.parametrize(
    "ref, message",
    [
        ("", "no image URL"),
        ("/etc/passwd", "not a Label Studio upload or local file"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("s3://bucket/x.png", "scheme 's3'"),
        ("http://example.org/x.png", "not on ALC_IMAGE_ALLOWED_HOSTS"),
        ("http://localhost/x.png", "non-public address"),  # allow-listed, but a local address
        ("PATH/redirect", "redirects"),
        ("PATH/big", "over the limit"),
        ("PATH/garbage", "could not be decoded"),
        ("PATH/slow", "longer than"),
        ("PATH/data/upload/1/12345.png", "HTTP 404"),
    ],
)
def test_refused_or_failing_images_give_a_clear_error(loader, image_server, ref, message):
    url, _ = image_server
    with pytest.raises(ImageError, match=message):
        loader.load(ref.replace("PATH", url))


def test_load_many_keeps_going_past_failures(loader):
    images, errors = loader.load_many(["/data/upload/1/1.png", "/nope", "/data/upload/1/2.png"])
    assert images.shape == (3, 16, 16, 3) and list(errors) == [1]
    assert images[0].any() and not images[1].any()


def test_a_slow_server_cannot_hold_a_download_past_the_time_limit(loader, image_server):
    url, _ = image_server  # /slow trickles 64 bytes every 0.1 s for 4 s
    started = time.perf_counter()
    with pytest.raises(ImageError, match="longer than 1.0 s"):
        loader.load(f"{url}/slow")
    assert time.perf_counter() - started < 1.5
