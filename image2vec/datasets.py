"""From a dataset on disk to the arrays the models train on: features F, targets X, truth.

Captions (COCO, Flickr token or Karpathy split files, read by :mod:`image2vec.captions`) or weak
tags (TSV) are turned into a vocabulary and sparse targets by :mod:`image2vec.vocabulary`; image
features come from the resumable feature store of :mod:`image2vec.features`. Images the store
skipped (unreadable files) are dropped from every array, so row n of F, X, the truth and the
queries is always the same image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from image2vec.captions import load_captions
from image2vec.errors import Image2VecError
from image2vec.features import extract_features
from image2vec.flickr import load_tag_tsv
from image2vec.io import resource_path
from image2vec.names import DEFAULT_EXTRACTOR, SUMMARY_POS
from image2vec.vocabulary import (
    CaptionAnalyzer,
    Vocabulary,
    analyze_captions,
    build_vocabulary,
    targets,
    words_of,
)

SAMPLE_CAPTIONS = resource_path("sample", "captions_sample.json")


def sample_image_dir() -> Path:
    """The image folder of the embedded sample: scikit-image's data folder."""
    import skimage.data

    return Path(skimage.data.data_dir)


@dataclass
class WordData:
    """Images ready for training and evaluation; row n of every array is image n.

    Attributes
    ----------
    keys : list
        Image keys (COCO ids or tag-file names).
    files : list of str
        Image files.
    features : ndarray of shape (N, p), float32
        F.
    targets : csr_matrix of shape (N, V)
        X: fraction of the image's captions containing each word (binary for tags).
    truth : csr_matrix of shape (N, V)
        1 where the word is among the image's caption (or tag) words that summaries are judged
        against: its nouns and adjectives, whatever parts of speech the vocabulary has.
    queries : csr_matrix of shape (N, V) or None
        The words of one caption of each image (its first caption with a vocabulary word),
        the retrieval queries; None for tags.
    vocabulary : Vocabulary
    extractor : str
        Name of the feature extractor.
    categories : csr_matrix of shape (N, C) or None
        COCO instance categories, when an instances file was given.
    category_names : list of str or None
    logits : ndarray of shape (N, 1000) or None
        ImageNet class logits of the images, when asked for (the imnet-glove baseline).
    captions : csr_matrix of shape (M, V) or None
        Every caption of every image (its vocabulary words, binary), for the image-sentence
        retrieval protocol; None for tags.
    caption_images : ndarray of shape (M,) or None
        The image (row of F) of each caption.
    """

    keys: list
    files: list[str]
    features: np.ndarray
    targets: sp.csr_matrix
    truth: sp.csr_matrix
    queries: sp.csr_matrix | None
    vocabulary: Vocabulary
    extractor: str
    categories: sp.csr_matrix | None = None
    category_names: list[str] | None = None
    logits: np.ndarray | None = None
    captions: sp.csr_matrix | None = None
    caption_images: np.ndarray | None = None

    def inputs_for(self, system: Any) -> np.ndarray:
        """What ``system`` reads for these images: the class logits or the features F.

        Raises
        ------
        Image2VecError
            The system reads class logits and they were not loaded.
        """
        if not reads_logits(system):
            return self.features
        if self.logits is None:
            raise Image2VecError("this system reads ImageNet class logits: load the data with "
                                 "logits=True")
        return self.logits


def load_caption_data(
    captions: str | os.PathLike,
    images: str | os.PathLike,
    *,
    store: str | os.PathLike,
    split: str | os.PathLike | None = None,
    instances: str | os.PathLike | None = None,
    vocabulary: Vocabulary | None = None,
    min_count: int | None = None,
    max_size: int | None = None,
    pos: Sequence[str] | None = None,
    extractor: str = DEFAULT_EXTRACTOR,
    device: str = "cpu",
    on_bad_image: str = "skip",
    logits: bool = False,
    progress: bool = True,
    client: Any = None,
) -> WordData:
    """Captions + images -> :class:`WordData` (features cached in ``store``).

    The vocabulary is built from the captions (words in at least ``min_count`` images) unless
    one is given (e.g. a trained model's, for evaluation).

    Parameters
    ----------
    captions : path-like
        A COCO captions JSON, a Flickr8k/Flickr30k token file or a Karpathy split JSON,
        recognised from the content (:func:`image2vec.captions.load_captions`).
    images : path-like
        The folder of its images.
    store : path-like
        Feature store folder (see :func:`image2vec.features.extract_features`).
    split : str or path-like, optional
        The images to use: a split name of the captions file (Karpathy: its ``split`` values;
        Flickr: train, dev, test from the official lists beside it; several joined by ``+``)
        or a split list file (one image file name per line). None: every image.
    instances : path-like, optional
        A COCO ``instances_*.json`` file (COCO captions only): adds the category labels.
    vocabulary : Vocabulary, optional
        Use these words instead of building a vocabulary.
    min_count : int, optional
        Keep words in at least this many images; default (None): 2 for fewer than
        :data:`image2vec.vocabulary.SMALL_DATA_IMAGES` (1000) images, else 5.
    max_size : int, optional
        Keep only the most frequent words.
    pos : sequence of {"noun", "adj", "verb"}, optional
        The parts of speech of the words (:class:`image2vec.vocabulary.CaptionAnalyzer`);
        default those of ``vocabulary`` when one is given, else nouns and adjectives. The
        targets, queries and captions hold them all; the truth only the nouns and adjectives.
    extractor, device, on_bad_image, logits, progress, client
        As in :func:`image2vec.features.extract_features` (``logits``: also the ImageNet class
        logits, in :attr:`WordData.logits`; ``client``: a ``dask.distributed`` client whose
        workers extract the features).

    Returns
    -------
    WordData
        Its vocabulary's ``info`` records ``source``, the ``min_count`` used and the tagger.
    """
    data = load_captions(captions, images, split=split, instances=instances)
    if pos is None:
        pos = SUMMARY_POS if vocabulary is None else vocabulary.info.get("pos", SUMMARY_POS)
    analyzer = CaptionAnalyzer(pos=pos)
    tagged = analyze_captions(data.captions, analyzer, progress=progress, tagged=True)
    every_document = words_of(tagged, analyzer.pos)
    built = vocabulary is None
    settings = {"min_count": min_count, "max_size": max_size, "info": {"source": str(captions)},
                "analyzer": analyzer}
    if built:  # from every image first: a min_count that empties it fails before extraction
        vocabulary = build_vocabulary(every_document, **settings)
    feature_set = extract_features(data.paths, store, keys=data.keys, extractor=extractor,
                                   device=device, on_bad_image=on_bad_image, logits=logits,
                                   progress=progress, client=client)
    rows = data.positions(feature_set.keys)
    documents = [every_document[i] for i in rows]
    if built and len(documents) < len(every_document):  # images were skipped: the words of the rest
        vocabulary = build_vocabulary(documents, **settings)
    first_captions = [[next((c for c in doc if vocabulary.columns(c)), doc[0])] for doc in documents]
    categories = None if data.categories is None else data.categories[rows]
    X = targets(documents, vocabulary)
    truth = X if set(analyzer.pos) == set(SUMMARY_POS) else targets(
        words_of([tagged[i] for i in rows], SUMMARY_POS), vocabulary)
    return WordData(
        keys=list(feature_set.keys), files=list(feature_set.files),
        features=np.asarray(feature_set.features), targets=X, truth=_binary(truth),
        queries=targets(first_captions, vocabulary, binary=True), vocabulary=vocabulary,
        extractor=feature_set.index["extractor"], categories=categories,
        category_names=data.category_names,
        logits=_array_or_none(feature_set.logits),
        captions=targets([[caption] for doc in documents for caption in doc], vocabulary, binary=True),
        caption_images=np.repeat(np.arange(len(documents)), [len(doc) for doc in documents]))


def load_tag_data(
    tags: str | os.PathLike,
    images: str | os.PathLike,
    *,
    store: str | os.PathLike,
    vocabulary: Vocabulary | None = None,
    min_count: int | None = None,
    max_size: int | None = None,
    extractor: str = DEFAULT_EXTRACTOR,
    device: str = "cpu",
    on_bad_image: str = "skip",
    logits: bool = False,
    progress: bool = True,
    client: Any = None,
) -> WordData:
    """Weak tags (TSV: image file, comma-separated tags) + images -> :class:`WordData`.

    Parameters are those of :func:`load_caption_data` (``tags`` is the TSV file, ``images``
    the folder its names are relative to); ``min_count`` defaults likewise to 2 below 1000
    images, else 5. Targets are binary.
    """
    tagged = load_tag_tsv(tags, images)
    all_documents = tagged.documents()
    built = vocabulary is None
    settings = {"min_count": min_count, "max_size": max_size, "info": {"source": str(tags)}}
    if built:  # from every image first: a min_count that empties it fails before extraction
        vocabulary = build_vocabulary(all_documents, **settings)
    feature_set = extract_features(tagged.paths, store, keys=tagged.keys, extractor=extractor,
                                   device=device, on_bad_image=on_bad_image, logits=logits,
                                   progress=progress, client=client)
    position = {key: i for i, key in enumerate(tagged.keys)}
    documents = [all_documents[position[key]] for key in feature_set.keys]
    if built and len(documents) < len(all_documents):  # images were skipped: the words of the rest
        vocabulary = build_vocabulary(documents, **settings)
    X = targets(documents, vocabulary, binary=True)
    return WordData(
        keys=list(feature_set.keys), files=list(feature_set.files),
        features=np.asarray(feature_set.features), targets=X, truth=_binary(X), queries=None,
        vocabulary=vocabulary, extractor=feature_set.index["extractor"],
        logits=_array_or_none(feature_set.logits))


def reads_logits(system: Any) -> bool:
    """Whether a system (or its class) reads ImageNet class logits instead of features F."""
    return getattr(system, "input_kind", "features") == "logits"


def _array_or_none(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a)


def _binary(X: sp.csr_matrix) -> sp.csr_matrix:
    truth = X.copy()
    truth.data = (truth.data > 0).astype(np.float32)
    truth.eliminate_zeros()
    return truth


def vocabulary_of(words: list[str]) -> Vocabulary:
    """A vocabulary with a trained model's words (their counts are not stored with the model)."""
    if not words:
        raise Image2VecError("the model has an empty vocabulary")
    return Vocabulary(words, [0] * len(words), 0, {"source": "model"})
