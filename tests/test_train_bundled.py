"""The bundled offline model: registered, small, loads without network, and classifies shapes it never saw
(held-out colour+shape combinations) far above chance; the README's example images come out right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import perception_encoder as pe
from perception_encoder.configs import get_model_info, list_models
from perception_encoder.train.synthetic import ShapesGenerator, class_names

NAME = "PE-Core-Shapes-T8-64"
ASSETS = Path(pe.__file__).resolve().parent / "assets"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a {}.")

pytestmark = pytest.mark.skipif(
    not (ASSETS / "bundled" / f"{NAME}.safetensors").is_file(), reason="bundled weights not built yet"
)


@pytest.fixture(scope="module")
def model():
    return pe.load(NAME).float().eval()


def test_registered_as_bundled_and_small():
    info = get_model_info(NAME)
    assert info.family == "bundled" and NAME in list_models("bundled")
    path = ASSETS / info.local_weights
    assert path.stat().st_size < 30e6


def test_loads_offline_with_the_registered_config(model):
    assert isinstance(model, pe.CLIP)
    assert model.config == get_model_info(NAME).config
    assert model.visual.config.image_size == 64


@torch.no_grad()
def test_zero_shot_on_held_out_combinations_beats_chance(model):
    classes = class_names("test")  # combinations never drawn in training
    classifier = pe.zero_shot_classifier(model, classes, TEMPLATES)
    tf = pe.image_transform(64)
    gen = ShapesGenerator(seed=123, image_size=64)  # images the script's evaluation did not use either
    pixels, labels = [], []
    for label, name in enumerate(classes):
        color, _, shape = name.partition(" ")
        for i in range(3):
            pixels.append(tf(gen.object_image(color, shape, i, "test").image))
            labels.append(label)
    pred = pe.zero_shot_logits(model.encode_image(torch.stack(pixels)), classifier).argmax(-1)
    accuracy = float((pred == torch.tensor(labels)).float().mean())
    chance = 1 / len(classes)
    assert accuracy > 5 * chance, f"held-out accuracy {accuracy:.2f} (chance {chance:.2f})"


@torch.no_grad()
def test_readme_example_images(model):
    files = sorted(EXAMPLES.glob("*.png"))
    assert len(files) >= 5
    labels = [f.stem.replace("_", " ") for f in files]
    classifier = pe.zero_shot_classifier(model, labels, ("{}",))  # bare labels, as `pe classify --labels`
    tf = pe.image_transform(64)
    pixels = torch.stack([tf(pe.load_image(f)) for f in files])
    pred = pe.zero_shot_logits(model.encode_image(pixels), classifier).argmax(-1).tolist()
    assert pred == list(range(len(files)))
