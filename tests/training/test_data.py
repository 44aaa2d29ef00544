"""Training-data builders that need no evaluation data: facts and their kinds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from d2l_haystack.training import data as D
from d2l_haystack.training.trainer import Phase, TrainConfig


def test_fact_kinds_weight_the_facts():
    rng = np.random.default_rng(0)
    numbers = [D.make_fact(rng, {"number": 1.0}) for _ in range(20)]
    assert all(answer.isdigit() and len(answer) == 5 and answer in sentence
               for sentence, _, answer, _ in numbers)
    mixed = [D.make_fact(rng, {"number": 1.0, "place": 1.0}) for _ in range(60)]
    kinds = {"number" if a.isdigit() else "place" for _, _, a, _ in mixed}
    assert kinds == {"number", "place"}


def test_default_fact_kinds_are_uniform_and_unchanged():
    # The default draws one integer per kind choice, as the committed configs were trained with.
    rng = np.random.default_rng(3)
    facts = [D.make_fact(rng) for _ in range(200)]
    assert sum(a.isdigit() and len(a) == 5 for _, _, a, _ in facts) in range(15, 45)  # ~1/7 of 200
    assert D.make_fact(np.random.default_rng(11)) == D.make_fact(np.random.default_rng(11), None)


@pytest.mark.parametrize("kinds, message", [({"digits": 1.0}, "unknown fact kinds"),
                                            ({"number": -1.0, "code": 2.0}, ">= 0"),
                                            ({"number": 0.0}, "positive sum")])
def test_bad_fact_kinds_fail_when_the_config_loads(tmp_path, kinds, message):
    with pytest.raises(ValueError, match=message):
        Phase(until_step=10, fact_kinds=kinds)
    path = tmp_path / "c.json"
    path.write_text(f'{{"phases": [{{"until_step": 10, "fact_kinds": {json.dumps(kinds)}}}]}}')
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_file(path)


@pytest.mark.parametrize("text, message", [
    (None, "cannot read training config"),
    ("phases: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("lr: 0.1\nlearning_rate: 0.1\n", r"unknown fields \['learning_rate'\]"),
    ("phases:\n  - {until_step: 10, mix: {clozee: 1.0}}\n", r"phase 1: unknown document kinds \['clozee'\]"),
    ("phases:\n  - {until_step: 10, mix_typo: {needle: 1.0}}\n", "phase 1: .*mix_typo"),
])
def test_bad_training_configs_fail_with_the_file_and_the_problem(tmp_path, text, message):
    from d2l_haystack.core.errors import ConfigError

    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig.from_file(path)
    assert str(path) in str(info.value)


def test_d2l_train_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from d2l_haystack.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("phases:\n  - {until_step: 10, mix: {clozee: 1.0}}\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("d2l train: error: training config") and "clozee" in err and "Traceback" not in err
