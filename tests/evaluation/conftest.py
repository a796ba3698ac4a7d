"""Fixtures of the evaluation tests (helpers in evalkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit import card_for, tiny_net
from vgg.card import save_model


@pytest.fixture(scope="session")
def untrained_model(prepared_shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny net's model directory (jittered S in [32, 48]: default Q 32, 40, 48)."""
    card = card_for(prepared_shards)
    return save_model(tmp_path_factory.mktemp("models") / "untrained", tiny_net(card.num_classes), card)
