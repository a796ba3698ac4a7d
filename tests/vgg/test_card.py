"""The model directory contract: what the trainer writes is what the evaluation sweep rebuilds."""

import json

import pytest
import torch

from vgg.card import CARD_FILE, MODEL_FILE, CardError, ModelCard, load_card, load_model, save_model
from vgg.model import build

CARD = ModelCard(arch="B", num_classes=7, crop=32, smin=40, smax=48, mean=(120.0, 115.5, 100.25), width=0.125,
                 fc_width=16, classes=tuple(f"n{i:08d}" for i in range(7)), flip=False, info={"epoch": 3})


def test_round_trip_rebuilds_the_same_net(tmp_path):
    torch.manual_seed(0)
    model = build("B", 7, width=0.125, fc_width=16, crop=32, init="glorot").eval()
    save_model(tmp_path / "m", model, CARD)
    loaded, card = load_model(tmp_path / "m")
    assert card == CARD and card.flip is False
    assert card.train_scale.smin == 40 and card.train_scale.smax == 48
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training


def test_missing_directory_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(CardError, match="no card.json"):
        load_model(tmp_path / "nowhere")
    save_model(tmp_path / "m", build("B", 7, width=0.125, fc_width=16, crop=32), CARD)
    (tmp_path / "m" / MODEL_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CardError, match="cannot read weights") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_weights_of_another_shape_are_refused(tmp_path):
    save_model(tmp_path / "m", build("A", 7, width=0.125, fc_width=16, crop=32), CARD)  # card says B
    with pytest.raises(CardError, match="do not match the card"):
        load_model(tmp_path / "m")


def test_bad_card_versions_and_fields(tmp_path):
    save_model(tmp_path / "m", build("B", 7, width=0.125, fc_width=16, crop=32), CARD)
    doc = json.loads((tmp_path / "m" / CARD_FILE).read_text())
    (tmp_path / "m" / CARD_FILE).write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(CardError, match="version 99"):
        load_card(tmp_path / "m")
    (tmp_path / "m" / CARD_FILE).write_text(json.dumps({**doc, "colour": "red"}))
    with pytest.raises(CardError, match="bad model card"):
        load_card(tmp_path / "m")


def test_a_card_without_the_flip_field_is_a_net_trained_with_flips(tmp_path):
    save_model(tmp_path / "m", build("B", 7, width=0.125, fc_width=16, crop=32), CARD)
    doc = json.loads((tmp_path / "m" / CARD_FILE).read_text())
    del doc["flip"]  # cards written before the field existed: the paper's training, with flips
    (tmp_path / "m" / CARD_FILE).write_text(json.dumps(doc))
    assert load_card(tmp_path / "m").flip is True
