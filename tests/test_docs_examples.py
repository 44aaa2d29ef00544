"""Every Python example of the README runs as written (in a scratch folder beside the samples).

The examples are the README's ```python blocks, run one after the other in one namespace (a
later block may use what an earlier one made), in a temporary working directory where
``d2l_haystack/samples`` is reachable by the same relative path as in a checkout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples():
    blocks = python_blocks(REPO / "README.md")
    assert len(blocks) >= 3 and all(b.strip() for b in blocks)
    for block in blocks:
        compile(block, "README.md", "exec")  # at least valid Python, even without the model


@pytest.mark.integration
def test_readme_python_examples_run_as_written(tmp_path, monkeypatch, embedded_model_dir, capsys):
    (tmp_path / "d2l_haystack").mkdir()
    os.symlink(REPO / "d2l_haystack" / "samples", tmp_path / "d2l_haystack" / "samples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(python_blocks(REPO / "README.md")):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert (tmp_path / "adapters" / "manual" / "adapter.safetensors").is_file()
    assert (tmp_path / "peft" / "manual").is_dir() and (tmp_path / "kb" / "workspace.json").is_file()
    assert out.strip()


def test_relative_links_in_the_docs_point_at_files_that_exist():
    pages = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "d2l_haystack" / "checkpoints").rglob("*.md")),
             *sorted((REPO / "benchmarks" / "results").rglob("README.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
