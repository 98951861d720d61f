"""The documentation: the site builds strictly, the README stays a short front door whose links work,
and no page narrates how the code was developed instead of describing the product."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# The two commands a fresh machine needs, exactly as the README must show them.
DEMO_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[test]" '
    "&& .venv/bin/alc demo --simulate-annotators 3 --pace 2"
)
TEST_COMMAND = "bash .ci/test"

README_MAX_LINES = 260

# Narration of the project's own history, which belongs in commit messages, not in user documentation.
FORBIDDEN = [
    r"\bthis session\b",
    r"\b(?:last|previous|earlier|later) session\b",
    r"\bsession's (?:changes|machine|run|code)\b",
    r"\bthe issue\b",
    r"\bissue \d+\b",
    r"\bbefore commit\b",
    r"\bmeasured earlier\b",
    r"\brun \d+\b(?! (?:workers|processes|seeds|tasks))",
    r"\bruns \d+ and \d+\b",
    r"\bteammates?\b",
]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_mkdocs_build_strict_succeeds(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "Active label cleaning" in index
    # Built offline: no web fonts fetched by the pages.
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, page


def test_mkdocs_config_fetches_nothing_at_build_time():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    assert config["theme"]["name"] == "material"
    assert config["theme"].get("font") is False, "theme.font must be false: no Google Fonts download"
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    for fetching in ("social", "privacy", "material/social", "material/privacy"):
        assert fetching not in plugins, f"the {fetching} plugin downloads at build time"


def test_readme_is_a_short_front_door_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    stripped = [line.strip() for line in lines]
    assert DEMO_COMMAND in stripped, "README.md must show the set-up-and-demo command on a line of its own"
    assert TEST_COMMAND in stripped, "README.md must show the test command on a line of its own"


def test_readme_links_and_images_point_at_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = [m.group(1) for m in LINK.finditer(text)]
    assert any(t.endswith(".png") for t in targets), "README.md shows the cleaning view"
    missing = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the README itself
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_no_page_narrates_development_history():
    found = []
    for page in markdown_pages():
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for pattern in FORBIDDEN:
                if re.search(pattern, line, flags=re.IGNORECASE):
                    found.append(f"{page.relative_to(ROOT)}:{number}: {pattern!r}: {line.strip()[:100]}")
    assert not found, "pages that narrate history instead of describing the product:\n" + "\n".join(found)


def test_forbidden_phrases_catch_narration_and_spare_product_text():
    def flagged(line: str) -> bool:
        return any(re.search(p, line, flags=re.IGNORECASE) for p in FORBIDDEN)

    assert flagged("Measured in this session on a busy box")
    assert flagged("the issue's target was met")
    assert flagged("run 4 stalled for 0.0 s")
    assert flagged("before commit 5ce28ab the demo overspent")
    assert not flagged("The integration tests share one server per test session")
    assert not flagged("Label Studio served by 4 gunicorn worker processes")
    assert not flagged("workers run 4 processes by default")
