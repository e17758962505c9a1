"""image2vec: summarize an image in a few words.

Images and words share one d-dimensional space in which an image's embedding is the sum of the
vectors of the words that describe it, r_n ~= D x_n; sparse recovery reads the words back out.

The names a user reaches for first are importable from the package itself and loaded on first
use (so that ``import image2vec`` and the command line start fast)::

    from image2vec import Image2Vec, load_caption_data, evaluate, save, load, load_pretrained
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "Image2Vec": "image2vec.model",
    "make_system": "image2vec.systems",
    "save": "image2vec.systems",
    "load": "image2vec.systems",
    "load_pretrained": "image2vec.pretrained",
    "evaluate": "image2vec.evaluate",
    "cross_validate": "image2vec.evaluate",
    "load_caption_data": "image2vec.datasets",
    "load_tag_data": "image2vec.datasets",
    "load_captions": "image2vec.captions",
    "extract_features": "image2vec.features",
    "Summary": "image2vec.summary",
    "Image2VecError": "image2vec.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'image2vec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
