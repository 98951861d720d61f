"""Content hashes of arrays (numpy only, so the torch-free selectors can use them too)."""

from __future__ import annotations

import hashlib

import numpy as np


def images_hash(images: np.ndarray) -> str:
    """SHA-256 of the shape, dtype and bytes of a whole array (order matters)."""
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(str(images.shape).encode() + str(images.dtype).encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def image_hashes(images: np.ndarray) -> list[str]:
    """SHA-256 of each image's shape, dtype and pixel bytes: an image's identity wherever it sits in a project."""
    images = np.ascontiguousarray(images)
    head = str(images.shape[1:]).encode() + str(images.dtype).encode()
    return [hashlib.sha256(head + memoryview(image).cast("B")).hexdigest() for image in images]


def text_hashes(texts: list[str]) -> list[str]:
    """SHA-256 of each text's UTF-8 bytes: a text's identity wherever it sits in a project."""
    return [hashlib.sha256(b"text:" + str(t).encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
