"""The docs: the site builds with --strict (no broken link, no missing page), and every
``>>>`` example in a page runs and prints what the page says."""

from __future__ import annotations

import doctest
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES_WITH_EXAMPLES = sorted(p for p in DOCS.rglob("*.md") if ">>> " in p.read_text())


def test_pages_with_examples_are_found():
    assert DOCS / "api.md" in PAGES_WITH_EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONNXSCALE_DB", str(tmp_path / "default.db"))
    # only the fenced python blocks: a doctest of the whole page would also read prose
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    text = "\n".join(blocks)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(text, {"tmp": tmp_path}, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} example(s) failed"


def test_the_site_builds_strictly(tmp_path):
    if shutil.which("mkdocs") is None and not _has_module("mkdocs"):
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_no_reference_to_files_outside_the_repository():
    """The repository carries its own design and docs: nothing cites a file it lacks."""
    texts = [p for p in REPO.rglob("*") if p.suffix in (".md", ".py", ".toml", ".yml", ".sh")
             and ".git" not in p.parts and "site" not in p.parts and p.is_file()]
    cited = [p for p in texts if "DESIGN.md" in p.read_text(errors="replace")
             and p != Path(__file__).resolve()]
    assert cited == []


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
