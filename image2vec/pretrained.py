"""The pretrained model that ships in the package: image2vec's default model trained on Flickr8k.

``image2vec summarize PHOTO.jpg``, ``similar``, ``retrieve``, ``evaluate`` (and ``serve``) use it
when no ``--model`` is given; in Python :func:`load_pretrained` returns it. It was trained by
``experiments/pretrained.py`` with the default settings of ``image2vec train`` (reduced-rank,
l2, on EfficientNet-Lite0 features) on the 7,000 train and dev images of Flickr8k, and is stored
in the project's own ``.npz`` format with float16 arrays (read back as float64), so it is loaded
with the same validation as any model file. Its metadata records the command, the data, the
commit and the dev figures of the same settings trained on train alone (the model card in the
README says more, including what it does badly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from image2vec.errors import Image2VecError
from image2vec.io import resource_path

__all__ = ["PRETRAINED_NAME", "pretrained_path", "load_pretrained", "describe"]

#: File name of the pretrained model under ``image2vec/resources/pretrained``.
PRETRAINED_NAME = "flickr8k-reduced-rank.npz"


def pretrained_path() -> Path:
    """Where the installed package keeps the pretrained model file."""
    return resource_path("pretrained", PRETRAINED_NAME)


def load_pretrained(return_metadata: bool = False) -> Any:
    """The pretrained Image2Vec model (fitted; its features are EfficientNet-Lite0's).

    Parameters
    ----------
    return_metadata : bool, default False
        Also return the model file's metadata (extractor, training data, command, commit,
        dev figures).

    Returns
    -------
    model : Image2Vec
        Or ``(model, metadata)`` with ``return_metadata``.

    Raises
    ------
    Image2VecError
        If the package was installed without its model file (or the file is damaged).

    Examples
    --------
    >>> from image2vec import extract_features, load_pretrained
    >>> model = load_pretrained()
    >>> features = extract_features(["photo.jpg"], "store").features  # doctest: +SKIP
    >>> model.summarize(features, 3).words  # doctest: +SKIP
    [['dog', 'grass', 'brown']]
    """
    from image2vec.names import SavedSystems
    from image2vec.persist import load_system

    path = pretrained_path()
    if not path.is_file():
        raise Image2VecError(f"the pretrained model {path} is not installed with this copy of "
                             "image2vec: reinstall the package, or give a model with --model")
    model, metadata, _ = load_system(path, SavedSystems())
    return (model, metadata) if return_metadata else model


def describe(model: Any, metadata: dict) -> str:
    """One line naming the pretrained model: what it is and what it was trained on."""
    return (f"the pretrained model ({model.model}, {model.objective}, {len(model.words_)} words, "
            f"trained on {metadata.get('data', 'Flickr8k')})")
