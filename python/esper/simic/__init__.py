"""Simic, Tamiyo's trainer: learned growth policies fitted on the outcomes of runs on the task suite's
training families and judged on its held-out families (DESIGN §6, docs/simic.md).

``esper simic collect`` runs episodes that write outcome records (:mod:`esper.simic.collect`);
``esper simic train`` fits the value model on them and ``esper simic eval`` judges it on held-out families
(:mod:`esper.simic.value`). Features and targets are computed in Go (``policy/value``), never here.
"""
