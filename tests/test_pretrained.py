"""The pretrained model that ships in the package: present, small, validated, documented, useful."""

import numpy as np
import pytest

import image2vec
from image2vec import pretrained
from image2vec.errors import Image2VecError
from image2vec.model import Image2Vec


def test_the_package_ships_a_small_float16_model_of_the_default_settings():
    path = pretrained.pretrained_path()
    assert path.is_file() and path.stat().st_size <= 2 * 2**20  # no tracked file over 2 MB
    with np.load(path, allow_pickle=False) as archive:
        assert archive["dictionary_"].dtype == np.float16
    model, metadata = image2vec.load_pretrained(return_metadata=True)
    assert isinstance(model, Image2Vec) and model.dictionary_.dtype == np.float64
    defaults = Image2Vec().get_params()
    assert (model.model, model.objective, model.solver) == (defaults["model"], defaults["objective"],
                                                            defaults["solver"])
    # the record of how it was made travels with it
    assert {"command", "commit", "date", "data", "n_words", "dev"} <= set(metadata)
    assert metadata["extractor"] == "efficientnet-lite0" and metadata["n_images"] == 7000
    assert metadata["n_words"] == len(model.words_) > 1000
    low, high = metadata["dev"]["P@3"][1:]
    assert 0.5 < low <= metadata["dev"]["P@3"][0] <= high


def test_its_words_are_visual_words_of_flickr_photos():
    model = image2vec.load_pretrained()
    assert {"dog", "grass", "beach", "snow", "child", "red"} <= set(model.words_)
    neighbours = [word for word, _ in model.similar("snow", 10)]
    assert {"snowy", "ski", "skier", "snowboarder", "mountain", "winter", "cold"} & set(neighbours)


def test_a_package_without_its_model_file_says_so_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "pretrained_path", lambda: tmp_path / "missing.npz")
    with pytest.raises(Image2VecError, match="pretrained model .* is not installed"):
        pretrained.load_pretrained()
