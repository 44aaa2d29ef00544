"""benchmarks/memory_scaling.py: held-out reports of several memory fits, read into one table and plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_scaling.py"
    spec = importlib.util.spec_from_file_location("memory_scaling", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(folder: Path, name: str, right: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cases = [{"id": f"q{i}", "method": "d2l", "contains": float(r), "f1": float(r), "exact_match": float(r)}
             for i, r in enumerate(right)]
    (folder / f"{name}.json").write_text(json.dumps({"cases": cases}))


def test_the_scaling_report_pairs_each_fit_with_the_first(tmp_path: Path, capsys) -> None:
    bench = _script()
    _report(tmp_path / "small", "realistic_auto", [1, 0, 0, 0])
    _report(tmp_path / "large", "realistic_auto", [1, 1, 1, 0])
    _report(tmp_path / "large", "short_docs_auto", [1, 0])  # a set only the second fit has
    out = tmp_path / "scaling.json"
    assert bench.main([f"900={tmp_path / 'small'}", f"4050={tmp_path / 'large'}", "--json", str(out),
                       "--plot", str(tmp_path / "scaling.png")]) == 0
    sets = json.loads(out.read_text())["sets"]
    realistic = sets["realistic_auto"]["points"]
    assert [(p["documents"], p["score"]) for p in realistic] == [(900, 0.25), (4050, 0.75)]
    assert realistic[0]["vs_first"] == [0.0, 0.0, 0.0] and realistic[1]["vs_first"][0] == pytest.approx(0.5)
    assert [p["documents"] for p in sets["short_docs_auto"]["points"]] == [4050]
    assert sets["short_docs_auto"]["bar"] == pytest.approx(0.6)
    assert "| held-out realistic documents | contains | 4050 | 0.750 |" in capsys.readouterr().out
    assert (tmp_path / "scaling.png").read_bytes()[:8] == PNG_MAGIC


def test_the_scaling_report_names_a_bad_point(tmp_path: Path, capsys) -> None:
    bench = _script()
    with pytest.raises(SystemExit):
        bench.main([f"many={tmp_path}"])
    assert "expected DOCS=FOLDER" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main([f"900={tmp_path}"])  # a folder without reports
    assert "no held-out report" in capsys.readouterr().err
