"""The main job on the embedded sample: its table, model, summaries and figure."""

import csv
import json

import numpy as np
from PIL import Image

from image2vec import systems
from image2vec.demo import run_demo
from image2vec.names import MODELS


def test_demo_on_the_embedded_sample(tmp_path, capsys):
    rows = run_demo(tmp_path, dim=16)
    printed = capsys.readouterr().out
    assert len(rows) == 2 * len(MODELS) + 3  # every model x objective, a rank read-out, the prior, knn
    with open(tmp_path / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [row["system"] for row in table] == [row["system"] for row in rows]
    for row in table:
        for key in ("precision", "recall", "f1", "map", "recall@1"):
            assert 0 <= float(row[key]) <= 1
    assert {f"{m} / {o}" for m in MODELS for o in ("l2", "ip")} <= {r["system"] for r in table}
    summaries = json.loads((tmp_path / "summaries.json").read_text())
    assert len(summaries) == 20
    assert all(1 <= len(s["pretrained"]) <= 3 and 1 <= len(s["trained"]) <= 3 for s in summaries)
    # the pretrained model (Flickr8k photos) names what Flickr photos show, and finds it
    pretrained = {s["image"].rsplit("/", 1)[-1]: s["pretrained"] for s in summaries}
    assert "motorcycle" in pretrained["motorcycle_left.png"] and "grass" in pretrained["grass.png"]
    assert "1. Using the pretrained model" in printed and "2. Training on the embedded sample" in printed
    assert "astronaut.png" in printed and "Visually similar words" in printed
    assert "cat: chelsea.png" in printed  # the folder's cat is the first image 'cat' retrieves
    assert "motorcycle: motorcycle_" in printed
    model, metadata = systems.load(tmp_path / "model.npz")
    assert metadata["extractor"] == "efficientnet-lite0" and len(model.words_) > 10
    with Image.open(tmp_path / "summaries.png") as figure:
        assert figure.size[0] > 400 and figure.size[1] > 400
        assert np.unique(np.asarray(figure.convert("L"))).size > 50  # a picture, not a blank canvas
