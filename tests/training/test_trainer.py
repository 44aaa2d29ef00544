"""The trainer on a tiny random model: it learns, logs, checkpoints and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from d2l_haystack.core.hypernet import load_checkpoint
from d2l_haystack.training import data as D
from d2l_haystack.training.trainer import Phase, TrainConfig, Trainer

pytestmark = pytest.mark.requires_squad


def _config(model_dir, out_dir, **over):
    cfg = TrainConfig(model=str(model_dir), out_dir=str(out_dir), device="cpu", batch_docs=2,
                      questions_per_doc=2, unrelated_pool=4, unrelated_prob=0.5, max_steps=4, warmup_steps=1,
                      eval_every=2, eval_docs=2, log_every=1, checkpoint_seconds=1e9,
                      hypernet={"latent_dim": 32, "proj_hidden": 64, "num_heads": 2},
                      phases=[Phase(until_step=2, min_tokens=8, max_tokens=32, mix={"needle": 1.0}),
                              Phase(until_step=100, min_tokens=16, max_tokens=48, mix={"needle": 0.5, "squad": 0.5},
                                    chunk_mix={"1": 0.5, "3": 0.5})])
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def _silent(_: str) -> None:
    pass


def test_train_logs_checkpoints_and_plots(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    result = Trainer(_config(tiny_llama_dir, out), log=_silent).train()
    assert result["step"] == 4
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "ce" in r] == [1, 2, 3, 4]
    assert any("eval_score" in r for r in rows)
    assert all(r["ce"] > 0 for r in rows if "ce" in r)
    assert (out / "loss.png").stat().st_size > 1000
    hyper, payload = load_checkpoint(out / "checkpoint", expected_base_model=tiny_llama_dir.name)
    assert payload["info"]["step"] == 4
    assert hyper.scale_B.abs().sum() > 0  # the B scalars moved away from their zero init


@pytest.fixture(scope="module")
def straight_weights(tiny_llama_dir, tmp_path_factory):
    """The weights after an uninterrupted run of the test config (what resumed runs must reach)."""
    straight = Trainer(_config(tiny_llama_dir, tmp_path_factory.mktemp("straight")), log=_silent)
    straight.train()
    return straight.hypernet.state_dict()


def _assert_same_weights(expected, trainer) -> None:
    for (name, a), (_, b) in zip(expected.items(), trainer.hypernet.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_resume_continues_exactly(tiny_llama_dir, tmp_path, straight_weights):
    first = Trainer(_config(tiny_llama_dir, tmp_path / "b", time_budget_seconds=0.0), log=_silent)
    assert first.train()["step"] == 1  # stopped by the time budget after one step, state saved
    resumed = Trainer(_config(tiny_llama_dir, tmp_path / "b"), resume=True, log=_silent)
    assert resumed.step == 1
    resumed.train()
    _assert_same_weights(straight_weights, resumed)


def test_stop_at_leaves_the_schedule_unchanged(tiny_llama_dir, tmp_path, straight_weights):
    stopped = Trainer(_config(tiny_llama_dir, tmp_path / "t", stop_at_step=3), log=_silent)
    assert stopped.train()["step"] == 3
    shorter = Trainer(_config(tiny_llama_dir, tmp_path / "u", max_steps=3), log=_silent)
    shorter.train()  # max_steps=3 decays the learning rate sooner: other weights at step 3
    assert any(not torch.allclose(a, b) for a, b in zip(stopped.hypernet.parameters(), shorter.hypernet.parameters()))
    resumed = Trainer(_config(tiny_llama_dir, tmp_path / "t"), resume=True, log=_silent)
    assert resumed.step == 3
    resumed.train()
    _assert_same_weights(straight_weights, resumed)


def test_documents_are_seeded_by_step(tiny_llama_dir, tmp_path):
    import numpy as np

    tr = Trainer(_config(tiny_llama_dir, tmp_path / "c"), log=_silent)
    phase = tr.cfg.phases[1]
    one = tr.make_docs(np.random.default_rng([0, 5, 0]), phase, 3)
    two = tr.make_docs(np.random.default_rng([0, 5, 0]), phase, 3)
    assert [d.text for d in one] == [d.text for d in two]
    assert all(qa.answer for d in one for qa in d.qas)
    for d in one:
        for qa in d.qas:
            if qa.kind == "fact":
                assert qa.answer in d.text  # the fact asked about is in the document


def test_phase_fact_kinds_reach_the_documents(tiny_llama_dir, tmp_path):
    import numpy as np

    tr = Trainer(_config(tiny_llama_dir, tmp_path / "k", unrelated_prob=0.0), log=_silent)
    phase = Phase(until_step=10, min_tokens=16, max_tokens=32, max_facts=2, fact_kinds={"number": 1.0})
    docs = tr.make_docs(np.random.default_rng(0), phase, 6)
    answers = [qa.answer for d in docs for qa in d.qas]
    assert len(answers) == 12 and all(a.isdigit() and len(a) == 5 for a in answers)


def test_the_unrelated_pool_follows_unrelated_seed(tiny_llama_dir, tmp_path):
    def pool(name: str, **over) -> list[str]:
        return [u["question"] for u in Trainer(_config(tiny_llama_dir, tmp_path / name, **over), log=_silent).unrelated]

    first = pool("a", seed=1)
    assert pool("b", seed=5, unrelated_seed=1) == first  # fresh documents, the same pool
    assert pool("c", seed=5) != first


def test_grouped_student_loss_equals_one_question_at_a_time(tiny_llama_dir, tmp_path):
    import numpy as np
    import torch.nn.functional as F

    from d2l_haystack.core.encoder import decoder_of

    tr = Trainer(_config(tiny_llama_dir, tmp_path / "g"), log=_silent)
    with torch.no_grad():  # a non-zero adapter, so the check covers the hooks too
        tr.hypernet.scale_B.fill_(0.5)
    docs = tr.make_docs(np.random.default_rng(3), tr.cfg.phases[1], 3)
    docs[0].qas.append(D.QA("Write one long sentence about the harbor.", "word " * 30, "unrelated"))
    factors, _ = tr.doc_factors(docs)
    seqs, starts, q_doc, ids_, probs_ = [], [], [], [], []
    for d, doc in enumerate(docs):
        for qa in doc.qas:
            prompt, ans = tr.fmt.question_ids(qa.question), tr.fmt.answer_ids(qa.answer)
            seqs.append(prompt + ans)
            starts.append(len(prompt))
            q_doc.append(d)
            ids_.append(torch.tensor(ans)[:, None])
            probs_.append(torch.ones(len(ans), 1))
    lengths = sorted(len(s) for s in seqs)
    assert lengths[-1] - lengths[0] > 20  # long and short questions: two groups
    q_loss, correct = tr._student(factors, seqs, starts, q_doc, ids_, probs_)
    for i, seq in enumerate(seqs):
        one = {m: (a[q_doc[i]][None], b[q_doc[i]][None]) for m, (a, b) in factors.items()}
        with tr.hooks.apply(one, scale=tr.hypernet.config.alpha):
            hidden = decoder_of(tr.model)(input_ids=torch.tensor([seq])).last_hidden_state
            logits = tr.model.get_output_embeddings()(hidden[0, starts[i] - 1:-1])
        target = torch.tensor(seq[starts[i]:])
        assert torch.allclose(q_loss[i], F.cross_entropy(logits.float(), target), atol=1e-4)
        assert bool(correct[i]) == bool((logits.argmax(-1) == target).all())


def test_logged_means_keep_kinds_missing_from_the_last_step():
    from d2l_haystack.training.trainer import _mean_rows

    rows = [{"ce": 1.0, "acc_cloze": 0.5}, {"ce": 3.0, "acc_cloze": 0.0}, {"ce": 2.0}]
    assert _mean_rows(rows) == {"ce": 2.0, "acc_cloze": 0.25}


def test_cloze_documents_come_from_training_text_and_held_out_text(tiny_llama_dir, tmp_path):
    import numpy as np

    # the config's phases have no cloze documents: their texts are read when first asked for
    tr = Trainer(_config(tiny_llama_dir, tmp_path / "z", unrelated_prob=0.0), log=_silent)
    phase = Phase(until_step=10, mix={"cloze": 1.0})
    train = tr.make_docs(np.random.default_rng(0), phase, 6)
    held = tr.make_docs(np.random.default_rng(0), phase, 6, held_out=True)
    train_squad = {c for c, _ in tr.squad}
    val_squad = {c for c, _ in tr.squad_eval}
    for docs, own, other in ((train, train_squad, val_squad), (held, val_squad, train_squad)):
        assert all(d.source == "cloze" and len(d.qas) == 2 for d in docs)
        assert all(qa.kind == "cloze" and qa.answer in d.text and qa.answer not in qa.question
                   for d in docs for qa in d.qas)
        assert not any(d.text in other for d in docs)  # SQuAD validation paragraphs stay held out
        assert any(d.text in own for d in docs)


def test_d2l_train_evaluate_scores_a_checkpoint_like_the_run_did(tiny_llama_dir, tmp_path, capsys):
    """``d2l train --evaluate CKPT`` trains nothing and reproduces the run's own last held-out score."""
    from d2l_haystack.cli import main

    cfg = _config(tiny_llama_dir, tmp_path / "run")
    Trainer(cfg, log=_silent).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "eval_score" in r][-1]
    assert last["step"] == cfg.max_steps
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    state = (tmp_path / "run" / "state.pt").stat().st_mtime_ns
    assert main(["train", "--config", str(path), "--evaluate", str(tmp_path / "run" / "checkpoint")]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["step"] == cfg.max_steps
    for key in ("eval_ce", "eval_ce_fact", "eval_acc_fact"):
        assert got[key] == pytest.approx(last[key], abs=0.02), key  # the checkpoint is stored in fp16
    assert (tmp_path / "run" / "state.pt").stat().st_mtime_ns == state  # nothing trained or written
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--evaluate", str(tmp_path / "nothing")]) == 2
    assert "is not a hypernetwork checkpoint" in capsys.readouterr().err


@pytest.mark.requires_squad
def test_chunks_of_different_lengths_are_encoded_in_length_groups_with_the_same_factors(data_trainer):
    """Encoding short chunks apart from long ones (less padding) gives every chunk the factors it
    gets when encoded alone."""
    import torch

    from d2l_haystack.core.lora import length_groups
    from d2l_haystack.training.data import QA, TrainDoc

    assert length_groups([5, 300, 6, 310]) == [[0, 2], [1, 3]]
    assert length_groups([50, 52, 51]) == [[0, 2, 1]]
    short = TrainDoc("The code is 4411.", [QA("What is the code?", "4411")], "needle")
    long = TrainDoc(" ".join(["The river was calm that morning."] * 60), [QA("How was the river?", "calm")], "needle")
    mid = TrainDoc("The code of the blue door is 72.", [QA("What is the code?", "72")], "needle")
    docs = [long, mid, short]  # long first: two groups; mid and short: one group, sorted by length
    data_trainer.hypernet.eval()
    with torch.no_grad():
        both, _ = data_trainer.doc_factors(docs)
        alone = [data_trainer.doc_factors([d])[0] for d in docs]
        one_group, _ = data_trainer.doc_factors([mid, short])
    for m, (a, b) in both.items():
        assert torch.allclose(one_group[m][0][0], alone[1][m][0][0], atol=1e-5)
        for k in range(3):
            assert torch.allclose(a[k], alone[k][m][0][0], atol=1e-5) and torch.allclose(b[k], alone[k][m][1][0],
                                                                                           atol=1e-5)


@pytest.mark.requires_squad
def test_evaluation_reports_what_the_adapter_read(data_trainer):
    """eval_read_<kind>: cross-entropy with another document's adapter minus with its own."""
    data_trainer.cfg.eval_docs = 4
    result = data_trainer.evaluate()
    assert any(k.startswith("eval_read_") for k in result)
    assert all(isinstance(v, float) for k, v in result.items() if k.startswith("eval_read_"))


@pytest.mark.requires_squad
def test_sentence_chunking_trains_the_layout_the_engine_serves(data_trainer, tmp_path):
    """A phase with ``chunking: auto`` cuts a short document into one chunk per sentence exactly
    as an engine with ``chunking="auto"`` does: the trainer's factors equal the adapter's."""
    import torch

    from d2l_haystack.core.engine import D2LEngine
    from d2l_haystack.core.hypernet import save_checkpoint
    from d2l_haystack.training.data import QA, TrainDoc
    from d2l_haystack.training.trainer import Phase

    with pytest.raises(ValueError, match="chunking must be one of"):
        Phase(until_step=1, chunking="paragraphs")
    text = "The kettle costs 40 euros. It ships from Lyon on Mondays. Returns take ten days."
    doc = TrainDoc(text, [QA("Where does it ship from?", "Lyon")], "realistic", chunking="auto")
    data_trainer.hypernet.eval()
    with torch.no_grad():
        factors, _ = data_trainer.doc_factors([doc])
    save_checkpoint(data_trainer.hypernet, tmp_path / "ckpt")
    engine = D2LEngine(data_trainer.cfg.model, checkpoint=str(tmp_path / "ckpt"), device="cpu",
                       chunking="auto", keys=None)
    adapter = engine.internalize(text)
    assert len(engine.chunk_ids(text)) == 3  # one chunk per sentence: rank 3 r plus the bias block
    m0 = next(iter(factors))
    assert factors[m0][0].shape[2] == adapter.factors[m0][0].shape[1] >= 3 * data_trainer.hypernet.config.rank
    for m, (a, b) in factors.items():
        # the same chunks in the same order (the engine pads its batch differently: float noise)
        assert torch.allclose(a[0], adapter.factors[m][0], atol=1e-3)
        assert torch.allclose(b[0], adapter.factors[m][1], atol=1e-3)


@pytest.mark.requires_squad
def test_at_most_max_chunks_are_kept_and_the_answer_is_among_them(data_trainer):
    import numpy as np

    from d2l_haystack.training.data import QA, TrainDoc

    sentences = [f"Room {i} is on floor {i + 1}." for i in range(12)]
    sentences[7] = "The spare key is kept in the blue tin."
    doc = TrainDoc(" ".join(sentences), [QA("Where is the spare key kept?", "in the blue tin"),
                                         QA("Who wrote Hamlet?", "Shakespeare", "unrelated")], "realistic",
                   chunking="auto")
    kept = data_trainer._kept_chunks(np.random.default_rng(0), doc, 4)
    texts = [data_trainer.tok.decode(c) for c in kept]
    every = [data_trainer.tok.decode(c) for c in data_trainer._kept_chunks(np.random.default_rng(0), doc, 99)]
    assert len(kept) == 4 and len(every) == 12
    assert any("blue tin" in t for t in texts)
    assert [every.index(t) for t in texts] == sorted(every.index(t) for t in texts)  # document order
    from d2l_haystack.training.trainer import Phase

    with pytest.raises(ValueError, match="max_chunks"):
        Phase(until_step=1, max_chunks=-1)


def test_gold_distillation_trains_on_the_gold_answer_with_the_teachers_reading(tiny_llama_dir, tmp_path):
    import numpy as np

    tr = Trainer(_config(tiny_llama_dir, tmp_path / "d", distill_top_k=4, distill_mode="gold",
                         distill_gold_weight=1.0, distill_kinds=["needle", "squad"]), log=_silent)
    plain = Trainer(_config(tiny_llama_dir, tmp_path / "p"), log=_silent)
    plain.hypernet.load_state_dict(tr.hypernet.state_dict())
    docs = tr.make_docs(np.random.default_rng(5), tr.cfg.phases[1], 2)
    factors = tr.doc_factors(docs)
    # gold weight 1: exactly the cross-entropy on the gold answer
    gold_ce = plain.loss(docs, factors=factors)[1]["ce"]
    assert tr.loss(docs, factors=factors)[1]["ce"] == pytest.approx(gold_ce, abs=1e-4)
    tr.cfg.distill_gold_weight = 0.5  # the teacher's soft part changes the loss, not the answer tokens
    assert tr.loss(docs, factors=factors)[1]["ce"] != pytest.approx(gold_ce, abs=1e-4)
    assert tr.train()["step"] == 4


def test_a_bad_distillation_setting_is_one_config_error(tmp_path):
    from d2l_haystack.training.trainer import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("distill_mode: teacher\n")
    with pytest.raises(ConfigError, match="distill_mode must be one of greedy, gold"):
        TrainConfig.from_file(path)


def test_a_per_layer_encoder_trains_and_its_checkpoint_internalizes(tiny_llama_dir, tmp_path):
    """The reference's QA encoder (every layer's input feeds that layer's LoRA) through the whole
    path: training steps, a checkpoint, an engine that internalizes and answers with it."""
    from d2l_haystack.core import D2LEngine

    out = tmp_path / "pl"
    cfg = _config(tiny_llama_dir, out, max_steps=2,
                  hypernet={"latent_dim": 32, "proj_hidden": 64, "num_heads": 2, "encoder_mode": "per_layer"},
                  phases=[Phase(until_step=100, min_tokens=16, max_tokens=48, mix={"realistic": 0.5, "needle": 0.5})])
    assert Trainer(cfg, log=_silent).train()["step"] == 2
    engine = D2LEngine(str(tiny_llama_dir), checkpoint=str(out / "checkpoint"), device="cpu", chunk_tokens=64,
                       keys=None)
    assert engine.hypernet.config.encoder_mode == "per_layer"
    adapter = engine.internalize("The boat house code is 4417. The ferry leaves at noon.", progress=False)
    a, b = next(iter(adapter.factors.values()))
    assert a.shape[0] == engine.model.config.num_hidden_layers and float(b.abs().sum()) > 0
    assert engine.generate("What is the boat house code?", adapters=adapter, max_new_tokens=3).text is not None


def test_realistic_phrasings_reach_the_training_documents_only(tiny_llama_dir, tmp_path):
    import numpy as np

    from d2l_haystack.training.trainer import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("realistic_phrasings: many\n")
    with pytest.raises(ConfigError, match="realistic_phrasings must be one of base, more"):
        TrainConfig.from_file(path)
    phase = Phase(until_step=100, mix={"realistic": 1.0})
    made = {}
    for phrasings in ("base", "more"):
        cfg = _config(tiny_llama_dir, tmp_path / phrasings, realistic_phrasings=phrasings, phases=[phase])
        tr = Trainer(cfg, log=_silent)
        made[phrasings] = [[d.text for d in tr.make_docs(np.random.default_rng(5), phase, 30, held_out=h)]
                           for h in (False, True)]
    assert made["base"][0] != made["more"][0]  # training documents draw the added templates
    assert made["base"][1] == made["more"][1]  # held-out documents are the same


def test_instructions_documents_train_against_the_teacher_with_the_system_prompt(tiny_llama_dir, tmp_path):
    import numpy as np

    cfg = _config(tiny_llama_dir, tmp_path / "i", distill_top_k=4, teacher_max_new_tokens=6,
                  phases=[Phase(until_step=100, mix={"instructions": 0.5, "needle": 0.5})])
    tr = Trainer(cfg, log=_silent)
    docs = tr.make_docs(np.random.default_rng(2), cfg.phases[0], 4)
    inst = [d for d in docs if d.source == "instructions"]
    assert inst and all(qa.kind == "instructions" for d in inst for qa in d.qas)  # never an unrelated question
    assert all(d.meta["instruction"]["text"] in d.text for d in inst)
    _, stats = tr.loss(docs)
    assert "ce_instructions" in stats
    pair = (inst[0].text, inst[0].qas[0].question)
    target = tr.teacher.get_many([pair], system=True)[0]  # cached by the loss: the system-prompt reply
    assert target.ids and target.top_ids.shape == (len(target.ids), 4)
    assert tr.teacher.get_many([pair], system=False)[0].ids is not None  # a separate entry (context mode)
    assert tr.train()["step"] == 4


def test_compliant_instructions_targets_follow_the_rule(tiny_llama_dir, tmp_path):
    import numpy as np

    from d2l_haystack.training.instructions import Instruction

    cfg = _config(tiny_llama_dir, tmp_path / "c", distill_top_k=4, teacher_max_new_tokens=6,
                  instructions_target="compliant", distill_gold_weight=0.8,
                  phases=[Phase(until_step=100, mix={"instructions": 1.0})])
    tr = Trainer(cfg, log=_silent)
    docs = tr.make_docs(np.random.default_rng(4), cfg.phases[0], 6)
    targets = tr._instructions_targets(docs)
    requests = [(d, qa) for d in docs for qa in d.qas]
    assert len(targets) == len(requests)
    fixable = 0
    for (doc, _), t in zip(requests, targets):
        inst = Instruction.from_dict(doc.meta["instruction"])
        reply = tr.fmt.tokenizer.decode(t.ids, skip_special_tokens=True).strip()
        if inst.kind != "min_words":  # a random tiny model never complies by itself: every target is rewritten
            fixable += 1
            assert inst.check(reply), (inst.text, reply)
            assert abs(float(t.top_probs[0, 0]) - 0.8) < 0.2 + 1e-6  # the gold share and the teacher's part
    assert fixable
    _, stats = tr.loss(docs)
    assert np.isfinite(stats["ce_instructions"])
    with pytest.raises(ValueError, match="instructions_target must be one of"):
        TrainConfig(model=str(tiny_llama_dir), instructions_target="gold")


def test_plain_share_trains_on_the_unprompted_reply_rewritten(tiny_llama_dir, tmp_path):
    import numpy as np

    from d2l_haystack.training.instructions import Instruction

    cfg = _config(tiny_llama_dir, tmp_path / "q", distill_top_k=4, teacher_max_new_tokens=6,
                  instructions_target="compliant", instructions_plain_share=1.0, distill_gold_weight=0.8,
                  phases=[Phase(until_step=100, mix={"instructions": 1.0})])
    tr = Trainer(cfg, log=_silent)
    docs = tr.make_docs(np.random.default_rng(4), cfg.phases[0], 6)
    targets = tr._instructions_targets(docs)
    rewritten = 0
    for (doc, qa), t in zip([(d, qa) for d in docs for qa in d.qas], targets):
        inst = Instruction.from_dict(doc.meta["instruction"])
        unprompted = tr.teacher.get_many([("", qa.question)], system=True)[0]  # cached: no instructions
        expected = inst.comply(tr.fmt.tokenizer.decode(unprompted.ids, skip_special_tokens=True).strip())
        if inst.check(expected):
            rewritten += 1
            assert t.ids == tr.fmt.answer_ids(expected), inst.kind
    assert rewritten
    with pytest.raises(ValueError, match="instructions_plain_share must be within"):
        TrainConfig(model=str(tiny_llama_dir), instructions_plain_share=1.5)


def test_instructions_need_a_teacher(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="distill_top_k must be > 0"):
        TrainConfig(model=str(tiny_llama_dir), phases=[Phase(until_step=10, mix={"instructions": 1.0})])


def test_recall_prob_adds_recall_questions_to_reading_documents_only(tiny_llama_dir, tmp_path):
    import numpy as np

    tr = Trainer(_config(tiny_llama_dir, tmp_path / "r", unrelated_prob=0.0), log=_silent)
    with pytest.raises(ValueError, match="recall_prob"):
        Phase(until_step=1, recall_prob=1.5)
    phase = Phase(until_step=10, mix={"realistic": 0.5, "needle": 0.5}, recall_prob=1.0)
    docs = tr.make_docs(np.random.default_rng(0), phase, 12)
    for doc in docs:
        recalls = [qa for qa in doc.qas if qa.kind == "recall"]
        assert len(recalls) == (1 if doc.source == "realistic" else 0)
        assert all(qa.answer in doc.text for qa in recalls)
    assert {d.source for d in docs} >= {"realistic"}
    _, stats = tr.loss(docs)
    assert "ce_recall" in stats and "acc_recall" in stats
    off = Phase(until_step=10, mix={"realistic": 1.0})
    assert not any(qa.kind == "recall" for d in tr.make_docs(np.random.default_rng(0), off, 6) for qa in d.qas)


def test_init_from_adds_the_copy_path_to_a_trained_network(tiny_llama_dir, tmp_path):
    import torch

    from d2l_haystack.core.errors import ConfigError
    from d2l_haystack.core.hypernet import save_checkpoint

    first = Trainer(_config(tiny_llama_dir, tmp_path / "a", unrelated_prob=0.0), log=_silent)
    with torch.no_grad():
        first.hypernet.scale_B.normal_(0, 0.1)
    save_checkpoint(first.hypernet, tmp_path / "ckpt")
    grown = Trainer(_config(tiny_llama_dir, tmp_path / "b", unrelated_prob=0.0, init_from=str(tmp_path / "ckpt"),
                            hypernet={"copy_path": True}, copy_lr_scale=10.0), log=_silent)
    assert grown.hypernet.config.copy_path
    copy_group = [g for g in grown.opt.param_groups if any(p is grown.hypernet.copy_gate for p in g["params"])]
    assert len(copy_group) == 1 and copy_group[0]["lr"] == pytest.approx(10.0 * grown.cfg.lr * grown._lr_factor(0))
    assert len(first.opt.param_groups) == 2  # no copy path, no third group: older runs' states still load
    docs = first.make_docs(__import__("numpy").random.default_rng(0), first.cfg.phases[0], 2)
    with torch.no_grad():
        a = first.doc_factors(docs)[0]["down_proj"][1]
        b = grown.doc_factors(docs)[0]["down_proj"][1]
    assert torch.allclose(a.half().float(), b, atol=1e-3)  # the checkpoint is fp16; the copy path adds nothing yet
    with pytest.raises(ConfigError, match="cannot change"):
        Trainer(_config(tiny_llama_dir, tmp_path / "c", init_from=str(tmp_path / "ckpt"),
                        hypernet={"latent_dim": 16}), log=_silent)
    started = Trainer(_config(tiny_llama_dir, tmp_path / "d", unrelated_prob=0.0, init_from=str(tmp_path / "ckpt"),
                              hypernet={"copy_path": True, "copy_centered": True}, copy_gate_init=0.5), log=_silent)
    assert torch.all(started.hypernet.copy_gate == 0.5) and started.hypernet.config.copy_centered
    with torch.no_grad():
        c = started.doc_factors(docs)[0]["down_proj"][1]
    assert not torch.allclose(c, b, atol=1e-3)  # the pointer writes from the first step
    with pytest.raises(ValueError, match="copy_gate_init needs"):
        TrainConfig(model=str(tiny_llama_dir), out_dir=str(tmp_path / "e"), copy_gate_init=0.5)
    fresh = Trainer(_config(tiny_llama_dir, tmp_path / "f", unrelated_prob=0.0,
                            hypernet={"latent_dim": 32, "proj_hidden": 64, "num_heads": 2, "copy_path": True},
                            copy_gate_init=0.5), log=_silent)
    assert torch.all(fresh.hypernet.copy_gate == 0.5)  # a new network's gates start there too
    save_checkpoint(started.hypernet, tmp_path / "copy_ckpt")
    with pytest.raises(ConfigError, match="trained copy gates"):  # never overwrites trained gates
        Trainer(_config(tiny_llama_dir, tmp_path / "g", init_from=str(tmp_path / "copy_ckpt"),
                        hypernet={"copy_path": True}, copy_gate_init=0.5), log=_silent)
