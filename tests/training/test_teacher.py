"""Top-k context distillation: teacher targets on a tiny random model, the soft loss, the cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from d2l_haystack.core.prompts import ChatFormat
from d2l_haystack.training.teacher import TeacherCache, soft_cross_entropy

DOC = "The access code for the red canoe is QX-417. The harbor was quiet that morning."
QUESTION = "What is the access code for the red canoe?"


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, ChatFormat(AutoTokenizer.from_pretrained(tiny_llama_dir))


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(5, 11)
    target = torch.tensor([3, 0, 10, 7, 7])
    ids = torch.stack([target, torch.zeros_like(target), torch.ones_like(target)], dim=1)
    probs = torch.tensor([[1.0, 0.0, 0.0]]).expand(5, -1)
    assert torch.allclose(soft_cross_entropy(logits, ids, probs), F.cross_entropy(logits, target, reduction="none"))
    soft = torch.tensor([[0.5, 0.5, 0.0]]).expand(5, -1)
    expected = 0.5 * F.cross_entropy(logits, target, reduction="none") + 0.5 * F.cross_entropy(
        logits, torch.zeros_like(target), reduction="none")
    assert torch.allclose(soft_cross_entropy(logits, ids, soft), expected)


def test_generated_tokens_end_at_the_first_stop_and_a_batch_pads_with_a_real_id(tiny):
    _, fmt = tiny
    stop, other = fmt.stop_ids[0], max(fmt.stop_ids) + 1
    assert fmt.until_stop([other, other, stop, other, stop]) == [other, other, stop]
    assert fmt.until_stop([other, other]) == [other, other] and fmt.until_stop([]) == []
    assert fmt.pad_id == (fmt.tokenizer.pad_token_id if fmt.tokenizer.pad_token_id is not None else stop)


def test_teacher_reads_the_document_and_stores_its_top_k(tiny):
    model, fmt = tiny
    cache = TeacherCache(model, fmt, top_k=4, max_new_tokens=6)
    t = cache.get(DOC, QUESTION)
    assert 1 <= len(t.ids) <= 6 and t.top_ids.shape == t.top_probs.shape == (len(t.ids), 4)
    assert t.top_ids[:, 0].tolist() == t.ids
    assert torch.allclose(t.top_probs.sum(-1), torch.ones(len(t.ids)), atol=1e-2)
    # the greedy answer of the base model with the document in the prompt
    prompt = torch.tensor([fmt.question_ids(QUESTION, context=DOC)])
    greedy = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                            do_sample=False, eos_token_id=fmt.stop_ids, pad_token_id=fmt.tokenizer.pad_token_id)
    expected = greedy[0, prompt.shape[1]:].tolist()
    stop = next((i for i, x in enumerate(expected) if x in fmt.stop_ids), None)
    if stop is not None:
        expected = expected[:stop] + [fmt.end_of_turn_id]
    assert t.ids == expected
    # without the document the teacher would be a different model call
    assert fmt.question_ids(QUESTION, context=DOC) != fmt.question_ids(QUESTION)


def test_teacher_targets_are_computed_once_and_persist(tiny, tmp_path):
    model, fmt = tiny
    path = tmp_path / "teacher.pt"
    cache = TeacherCache(model, fmt, top_k=3, max_new_tokens=4, path=path)
    first = cache.get(DOC, QUESTION)
    again = cache.get(DOC, QUESTION)
    other = cache.get(DOC, "Where is the red canoe?")
    assert cache.computed == 2 and len(cache) == 2 and first.ids == again.ids
    assert other.top_ids.shape[1] == 3
    cache.save()
    reloaded = TeacherCache(model, fmt, top_k=3, max_new_tokens=4, path=path)
    assert len(reloaded) == 2
    assert reloaded.get(DOC, QUESTION).ids == first.ids and reloaded.computed == 0
    # a cache made with other settings is not reused
    assert len(TeacherCache(model, fmt, top_k=5, max_new_tokens=4, path=path)) == 0
    with pytest.raises(ValueError, match="top_k"):
        TeacherCache(model, fmt, top_k=0)


def test_a_document_longer_than_the_window_is_shortened_not_the_question(tiny):
    model, fmt = tiny
    cache = TeacherCache(model, fmt, top_k=2, max_new_tokens=3, max_prompt_tokens=120)
    long_doc = " ".join(["The harbor was quiet that morning."] * 200)
    t = cache.get(long_doc, QUESTION)
    assert 1 <= len(t.ids) <= 3


@pytest.mark.requires_squad
def test_trainer_distils_squad_questions(tiny_llama_dir, tmp_path):
    from d2l_haystack.training.trainer import Phase, TrainConfig, Trainer

    cfg = TrainConfig(model=str(tiny_llama_dir), out_dir=str(tmp_path / "run"), device="cpu", batch_docs=2,
                      questions_per_doc=2, unrelated_pool=4, unrelated_prob=0.0, max_steps=2, warmup_steps=1,
                      eval_every=100, log_every=1, checkpoint_seconds=1e9, distill_top_k=4,
                      teacher_max_new_tokens=5, hypernet={"latent_dim": 32, "proj_hidden": 64, "num_heads": 2},
                      phases=[Phase(until_step=100, min_tokens=16, max_tokens=48, mix={"squad": 1.0})])
    trainer = Trainer(cfg, log=lambda _: None)
    import numpy as np

    docs = trainer.make_docs(np.random.default_rng(0), cfg.phases[0], 2)
    distilled, stats = trainer.loss(docs)
    assert trainer.teacher is not None and trainer.teacher.computed == sum(len(d.qas) for d in docs)
    trainer.teacher = None  # the same documents against the gold answers give another loss
    gold, _ = trainer.loss(docs)
    assert not torch.isclose(distilled, gold)
    assert torch.isfinite(distilled) and stats["ce_squad"] > 0
    trainer = Trainer(cfg, log=lambda _: None)
    trainer.train()
    assert (tmp_path / "run" / "teacher.pt").is_file()
    assert len(TeacherCache(trainer.model, trainer.fmt, 4, 5, path=tmp_path / "run" / "teacher.pt")) > 0


def test_batched_targets_match_one_at_a_time(tiny):
    model, fmt = tiny
    pairs = [(DOC, QUESTION), ("A short note.", "What is it?"), (DOC + " " + DOC, "Where is the canoe?"),
             (DOC, QUESTION)]
    batched = TeacherCache(model, fmt, top_k=3, max_new_tokens=5).get_many(pairs, batch_size=4)
    single = TeacherCache(model, fmt, top_k=3, max_new_tokens=5)
    assert single.get_many(pairs[:1]) and single.computed == 1
    for pair, b in zip(pairs, batched):
        s = single.get(*pair)
        assert s.ids == b.ids
        assert torch.allclose(s.top_probs, b.top_probs, atol=2e-2)
    assert single.computed == 3  # the repeated pair was not recomputed


def test_targets_along_the_gold_answer_keep_its_form_and_mix_the_teacher(tiny):
    model, fmt = tiny
    cache = TeacherCache(model, fmt, top_k=4)
    gold = fmt.answer_ids("QX-417")
    other = fmt.answer_ids("a much longer answer than the gold one")
    t, u = cache.forced_many([(DOC, QUESTION, gold), (DOC, "Who?", other)], gold_weight=0.25)
    assert t.ids == gold and t.top_ids.shape == t.top_probs.shape == (len(gold), 4)
    assert t.top_ids[:, 0].tolist() == gold and u.top_ids[:, 0].tolist() == other
    assert torch.allclose(t.top_probs.sum(-1), torch.ones(len(gold)), atol=1e-5)
    assert (t.top_ids[:, 1:] != t.top_ids[:, :1]).all()  # the others exclude the gold token
    # the soft part is the teacher's own distribution with the document, teacher-forced on the gold answer
    seq = torch.tensor([fmt.question_ids(QUESTION, context=DOC) + gold])
    probs = torch.softmax(model(input_ids=seq).logits[0, -len(gold) - 1:-1].float(), dim=-1)
    picked = probs.gather(1, t.top_ids)
    expected = 0.75 * picked / picked.sum(-1, keepdim=True)
    expected[:, 0] += 0.25
    assert torch.allclose(t.top_probs, expected, atol=1e-4)
    # gold_weight 1 is the plain cross-entropy target
    (one,) = cache.forced_many([(DOC, QUESTION, gold)], gold_weight=1.0)
    assert torch.allclose(one.top_probs[:, 0], torch.ones(len(gold)))
    with pytest.raises(ValueError, match="gold_weight"):
        cache.forced_many([(DOC, QUESTION, gold)], gold_weight=1.5)
