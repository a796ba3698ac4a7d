"""evaluation.shard's decoder: the backend is chosen where every decoder's is, in pipeline.decode."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from evaluation.shard import decoder_for
from pipeline import decode


def test_decoder_for_leaves_the_backend_choice_to_pipeline_decode(monkeypatch):
    asked = []
    resolve = decode.resolve_backend

    def spy(backend: str = "auto", device=None) -> str:
        asked.append(backend)
        return resolve(backend, device)

    monkeypatch.setattr(decode, "resolve_backend", spy)
    card = SimpleNamespace(mean=(120.0, 110.0, 100.0), std=None)
    assert decoder_for("auto", card, torch.device("cpu")).backend == "cpu"  # "auto" on a CPU: the CPU decoder
    assert asked == ["auto"]  # not a second copy of the rule deciding first
