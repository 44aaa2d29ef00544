"""The committed training configs: the shipped one and the history all still load."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_committed_training_config_loads():
    from d2l_haystack.training.trainer import DOC_KINDS, TrainConfig

    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert (REPO / "configs" / "shipped.yaml") in configs and len(configs) >= 4
    for path in configs:
        cfg = TrainConfig.from_file(path)
        assert cfg.phases and all(set(p.mix) <= set(DOC_KINDS) for p in cfg.phases), path.name
        assert cfg.max_steps > 0 and cfg.out_dir.startswith("runs/"), path.name
        assert all(int(k) >= 1 for p in cfg.phases for k in p.chunk_mix), path.name
        assert [p.until_step for p in cfg.phases] == sorted(p.until_step for p in cfg.phases), path.name
        if cfg.init_from and not cfg.init_from.startswith("runs/"):
            assert (REPO / cfg.init_from / "config.json").is_file(), path.name


def test_the_shipped_config_made_the_shipped_checkpoint():
    import json

    import yaml

    shipped = yaml.safe_load((REPO / "configs" / "shipped.yaml").read_text())
    card = json.loads((REPO / "d2l_haystack" / "checkpoints" / "smollm2-135m-instruct" / "config.json").read_text())
    made = card["info"]["train_config"]
    assert {k: made[k] for k in ("seed", "lr", "max_steps", "batch_docs", "out_dir")} == \
        {k: shipped[k] for k in ("seed", "lr", "max_steps", "batch_docs", "out_dir")}
