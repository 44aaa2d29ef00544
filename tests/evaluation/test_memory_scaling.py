"""benchmarks/memory_scaling.py: held-out reports of several memory fits, read into one table and plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _script(name: str = "memory_scaling") -> ModuleType:
    import sys

    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(benchmarks))  # reading_progress imports memory_scaling
    spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
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


def test_the_progress_report_carries_a_set_a_stage_did_not_rerun(tmp_path: Path, capsys) -> None:
    """benchmarks/reading_progress.py: stages by label; a stage without a set's report takes the
    stage before's (marked carried), and a set no stage before had stays absent."""
    bench = _script("reading_progress")
    _report(tmp_path / "a", "realistic_auto", [1, 0, 0, 0])
    _report(tmp_path / "b", "realistic_auto", [1, 1, 0, 0])
    _report(tmp_path / "b", "needle_heldout_long", [0, 1])
    _report(tmp_path / "c", "squad_large", [1, 1])
    out = tmp_path / "progress.json"
    assert bench.main([f"net={tmp_path / 'a'}", f"M1 = x={tmp_path / 'b'}", f"M2={tmp_path / 'c'}",
                       "--json", str(out), "--plot", str(tmp_path / "progress.png")]) == 0
    sets = json.loads(out.read_text())["sets"]
    realistic = sets["realistic_auto"]["points"]
    assert [(p["label"], p["score"], p["carried"]) for p in realistic] == [
        ("net", 0.25, False), ("M1 = x", 0.5, False), ("M2", 0.5, True)]
    assert realistic[2]["vs_first"][0] == pytest.approx(0.25)
    assert [(p["label"], p["carried"]) for p in sets["needle_heldout_long"]["points"]] == [("M1 = x", False),
                                                                                          ("M2", True)]
    assert [p["label"] for p in sets["squad_large"]["points"]] == ["M2"]
    assert sets["needle_heldout_long"]["bar"] == pytest.approx(0.9)
    assert "| held-out realistic documents | contains | M2 | 0.500 |" in capsys.readouterr().out
    assert (tmp_path / "progress.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit):
        bench.main([f"{tmp_path / 'a'}"])
    assert "expected LABEL=FOLDER" in capsys.readouterr().err
