"""Peak memory of decoding hostile images: the bounded loader (backend.images) against a full decode.

Each case runs in a fresh process and reports the growth of its peak RSS (ru_maxrss) while decoding.
Run: .venv/bin/python benchmarks/image_memory.py
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CASE = """
import json, resource, time
from pathlib import Path
from PIL import Image
from backend.images import ImageError, ImageLoader
raw = Path({path!r}).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
outcome = "decoded"
if {bounded!r}:
    try:
        shape = ImageLoader(None, None).decode(raw).shape
        outcome = f"decoded to {{shape}}"
    except ImageError as exc:
        outcome = str(exc)
else:
    import io
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(io.BytesIO(raw)) as img:
        img.convert("RGB").resize((32, 32))
seconds = time.perf_counter() - started
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{"mb": grown / 1024, "s": seconds, "outcome": outcome}}))
"""


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    png, jpeg = folder / "huge.png", folder / "huge.jpg"
    Image.new("1", (12_000, 12_000)).save(png)
    Image.new("L", (12_000, 12_000), 128).save(jpeg, quality=50)
    for path in (png, jpeg):
        for bounded in (False, True):
            out = subprocess.run([sys.executable, "-c", CASE.format(path=str(path), bounded=bounded)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            kind = "bounded loader" if bounded else "full decode"
            print(f"{path.name} ({path.stat().st_size / 1024:.0f} KB, 12,000 x 12,000): {kind:14s} "
                  f"peak RSS +{r['mb']:.0f} MB in {r['s']:.2f} s: {r['outcome']}")


if __name__ == "__main__":
    main()
