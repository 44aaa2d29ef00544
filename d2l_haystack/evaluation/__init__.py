"""Evaluation: answer metrics, case files and their builders, the methods compared, and the runner.

* :mod:`.metrics`: exact match, F1 and ``contains`` (SQuAD v1.1 normalisation).
* :mod:`.cases`: the JSONL case format and builders from held-out data only.
* :mod:`.methods`: ``base``, ``icl``, ``d2l``, ``d2l-all`` (core only) and the method registry;
  :mod:`.haystack_methods` adds ``rag``, ``hybrid`` and ``routed`` (the Haystack side).
* :mod:`.runner`: :func:`~.runner.run_eval`, behind ``d2l eval`` and ``d2l bench``.

Evaluation sits above training and the knowledge base: it may import both; neither imports it.
"""
