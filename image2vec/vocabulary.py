"""Words of the images: caption analysis (NLTK), the vocabulary, and the targets X.

Captions become words in three steps, all NLTK: tokenising (Treebank tokenizer), deciding which
tokens are nouns or adjectives, and lemmatising with WordNet ("dogs" -> "dog"). The noun/adjective
decision uses NLTK's averaged perceptron tagger where its data is installed; otherwise it is read
from WordNet, taking the part of speech of the token's most frequent sense (WordNet's sense-tagged
counts). WordNet itself comes from NLTK's data when present, else from Debian's ``wordnet-base``
(``/usr/share/wordnet``), which this module makes readable by NLTK's ``WordNetCorpusReader``.

The vocabulary keeps a word when it occurs in at least ``min_count`` training images: by default
2 when the training set has fewer than :data:`SMALL_DATA_IMAGES` images, else 5 (the COCO
setting; see :func:`default_min_count`). Its saved info records the ``min_count`` used and, for
captions, which tagger path decided nouns and adjectives. The target
of image n is x_n in R^V with x_nv = (number of image n's captions containing word v) / (number
of its captions), or 1{word v in image n} in the binary variant; X = [x_1 ... x_N]^T is a
scipy.sparse CSR matrix, never a dense N x V array.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import nltk
import numpy as np
import scipy.sparse as sp
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.tokenize import TreebankWordTokenizer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from tqdm.auto import tqdm

from image2vec.errors import Image2VecError
from image2vec.io import cache_dir, read_json, write_json
from image2vec.names import PARTS_OF_SPEECH, SUMMARY_POS

__all__ = ["load_wordnet", "base_forms", "CaptionAnalyzer", "analyze_captions", "Vocabulary",
           "SMALL_DATA_IMAGES", "MAX_WORD_LENGTH", "default_min_count", "build_vocabulary", "targets"]

logger = logging.getLogger(__name__)

#: Where Debian's ``wordnet-base`` package puts the WordNet 3.0 database.
DEBIAN_WORDNET = Path("/usr/share/wordnet")

# WordNet's lexicographer files, numbered as in the lex_filenum field of the data files
# (WordNet 3.0, lexnames(5WN)). NLTK's reader needs them; Debian does not ship the file.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}

# Penn Treebank tags kept, mapped to WordNet parts of speech.
_PENN_TO_WORDNET = {"NN": "n", "NNS": "n", "NNP": "n", "NNPS": "n",
                    "JJ": "a", "JJR": "a", "JJS": "a",
                    "VB": "v", "VBD": "v", "VBG": "v", "VBN": "v", "VBP": "v", "VBZ": "v"}
#: The WordNet letter of each part of speech a vocabulary can take.
_WORDNET_LETTER = {"noun": "n", "adj": "a", "verb": "v"}
_WORDNET_POS = ("n", "v", "a", "r")
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS)

#: The longest word or tag a vocabulary takes (English words reach 45 letters; tags are phrases).
MAX_WORD_LENGTH = 64
#: Training sets with fewer images than this are "small data": default ``min_count`` 2, else 5.
SMALL_DATA_IMAGES = 1000


def _debian_wordnet_corpus(source: Path) -> Path:
    """An NLTK corpus folder with the files of ``source`` plus a ``lexnames`` file.

    Built once under ``<cache>/nltk_data`` as copies (about 30 MB: NLTK refuses symlinks and
    hard links to files outside its data folders), in a temporary folder renamed into place;
    where the cache folder cannot be written, in a temporary folder removed at exit.
    """
    # Not "corpora/wordnet": NLTK's own lazy loader would then find it and fail on the missing
    # index.sense instead of reporting that its data is not installed.
    target = cache_dir() / "nltk_data" / "corpora" / "wordnet-debian"
    if (target / "lexnames").is_file() and (target / "data.noun").exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    except OSError as exc:  # a read-only cache: a copy for this process, removed at its exit
        logger.info("cannot write in the cache folder %s (%s): WordNet copied to a temporary "
                    "folder", cache_dir(), exc.strerror or exc)
        private = Path(tempfile.mkdtemp(prefix="image2vec-wordnet-"))
        atexit.register(shutil.rmtree, private, True)
        target = private / "nltk_data" / "corpora" / "wordnet-debian"
        target.parent.mkdir(parents=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    try:
        for f in source.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        lines = [f"{i:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}"
                 for i, name in enumerate(_LEXNAMES)]
        (tmp / "lexnames").write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it meanwhile
            if not (target / "lexnames").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class _DebianWordNet(WordNetCorpusReader):
    """NLTK's WordNet reader over Debian's files, which lack ``index.sense``.

    NLTK only needs that file to map synsets between WordNet versions (for the multilingual
    Open Multilingual WordNet, not used here); this is WordNet 3.0 itself, so no map is made.
    """

    def map_wn(self, version: str = "wordnet") -> None:
        return None


@functools.cache
def load_wordnet() -> WordNetCorpusReader:
    """WordNet for NLTK: NLTK's own data if installed, else Debian's ``wordnet-base``.

    Which of the two is read is logged at DEBUG (the caption analysis says it at INFO).

    Raises
    ------
    Image2VecError
        If neither is installed.
    """
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        logger.debug("WordNet: NLTK data (%s)", wordnet.root)
        return wordnet
    except LookupError:
        pass
    source = Path(os.environ.get("IMAGE2VEC_WORDNET_DIR") or DEBIAN_WORDNET)
    if not (source / "data.noun").is_file():
        raise Image2VecError(
            f"WordNet is not installed (no NLTK wordnet data, nothing in {source}): "
            "install Debian's package with `apt-get install wordnet-base` "
            "(or set IMAGE2VEC_WORDNET_DIR to a WordNet 3.0 dict folder)")
    root = _debian_wordnet_corpus(source)
    nltk_data = str(root.parent.parent)
    if nltk_data not in nltk.data.path:  # NLTK reads corpora only under its data paths
        nltk.data.path.append(nltk_data)
    with warnings.catch_warnings():  # "multilingual functions are not available"
        warnings.simplefilter("ignore", UserWarning)
        reader = _DebianWordNet(str(root), None)
    logger.debug("WordNet: Debian wordnet-base from %s (via %s)", source, root)
    return reader


def _perceptron_tagger():
    """NLTK's averaged perceptron tagger, or None when its data is not installed."""
    from nltk.tag import PerceptronTagger

    try:
        return PerceptronTagger()
    except (LookupError, OSError):
        return None


class CaptionAnalyzer:
    """Turn a caption into its nouns and adjectives (or the parts of speech ``pos``),
    lower-cased and lemmatised.

    Parameters
    ----------
    tagger : {"auto", "perceptron", "wordnet"}
        How nouns and adjectives are told apart. ``"perceptron"``: NLTK's averaged perceptron
        tagger (Penn tags NN*, JJ*). ``"wordnet"``: the part of speech of the token's most
        frequent WordNet sense, over all the base forms WordNet's morphology finds; a token
        WordNet does not know is taken as a noun. ``"auto"``: the perceptron where its data is
        installed, else WordNet. The path used is logged and stored in :attr:`backend`
        (``"perceptron"`` or ``"wordnet"``), which :func:`build_vocabulary` records.
    stop_words : iterable of str, optional
        Words never kept (default: scikit-learn's English stop words).
    pos : sequence of {"noun", "adj", "verb"}, default ("noun", "adj")
        The parts of speech kept; verbs become their base form ("running" -> "run").

    Examples
    --------
    >>> CaptionAnalyzer("wordnet")("Two dogs sitting on a red couch.")
    ['dog', 'red', 'couch']
    """

    def __init__(self, tagger: str = "auto", stop_words: Iterable[str] | None = None,
                 pos: Sequence[str] = SUMMARY_POS):
        if tagger not in ("auto", "perceptron", "wordnet"):
            raise Image2VecError(f"tagger must be auto, perceptron or wordnet, not {tagger!r}")
        self.pos = check_pos(pos)
        self._wordnet = load_wordnet()
        self._tagger = None if tagger == "wordnet" else _perceptron_tagger()
        if tagger == "perceptron" and self._tagger is None:
            raise Image2VecError("NLTK's averaged perceptron tagger data is not installed "
                                 "(taggers/averaged_perceptron_tagger_eng); use tagger='wordnet'")
        self.backend = "wordnet" if self._tagger is None else "perceptron"
        logger.info("caption analysis: nouns/adjectives by %s; WordNet from %s",
                    "NLTK's averaged perceptron tagger" if self._tagger
                    else "WordNet's most frequent sense (no perceptron tagger data installed)",
                    self._wordnet.root)
        self.stop_words = frozenset(STOP_WORDS if stop_words is None else stop_words)
        self._tokenizer = TreebankWordTokenizer()
        self._best_sense = functools.lru_cache(maxsize=1 << 16)(self._best_sense_uncached)

    def _best_sense_uncached(self, token: str, poses: tuple[str, ...]) -> tuple[str, str] | None:
        """(part of speech, lemma) of the most frequent WordNet sense of ``token`` over ``poses``.

        Senses are ranked by WordNet's tagged count, ties by the number of senses of the
        (pos, lemma) pair, then by the order of ``poses``; None if WordNet knows no sense.
        """
        wn = self._wordnet
        best, best_key = None, None
        for rank, pos in enumerate(poses):
            for lemma in wn._morphy(token, pos):
                synsets = wn.synsets(lemma, pos)
                if not synsets:
                    continue
                first = synsets[0]  # WordNet lists senses most frequent first
                count = max((lm.count() for lm in first.lemmas() if lm.name().lower() == lemma),
                            default=0)
                key = (count, len(synsets), -rank, -len(lemma))
                if best_key is None or key > best_key:
                    best, best_key = (pos, lemma), key
        return best

    def _keep(self, token: str) -> bool:
        return (len(token) > 1 and token not in self.stop_words
                and token.replace("-", "").isalpha())

    def __call__(self, caption: str) -> list[str]:
        """The words of ``caption`` of the parts of speech ``pos``, lemmatised, in order
        (repeats kept)."""
        letters = {_WORDNET_LETTER[name] for name in self.pos}
        return [word for word, letter in self.tagged(caption) if letter in letters]

    def tagged(self, caption: str) -> list[tuple[str, str]]:
        """(lemma, WordNet letter n, a or v) of every noun, adjective and verb of ``caption``."""
        tokens = self._tokenizer.tokenize(caption)
        words = []
        if self._tagger is not None:
            for token, tag in self._tagger.tag(tokens):
                pos = _PENN_TO_WORDNET.get(tag)
                token = token.lower()
                if pos is None or not self._keep(token):
                    continue
                sense = self._best_sense(token, (pos,))
                words.append((sense[1] if sense else token, pos))
        else:
            for token in tokens:
                token = token.lower()
                if not self._keep(token):
                    continue
                sense = self._best_sense(token, _WORDNET_POS)
                if sense is None:
                    words.append((token, "n"))
                elif sense[0] in ("n", "a", "v"):
                    words.append((sense[1], sense[0]))
        return [(w, pos) for w, pos in words if w not in self.stop_words]


def base_forms(word: str) -> list[str]:
    """The WordNet base forms of one word other than itself, as captions are lemmatised.

    Noun, then verb, then adjective readings, each form once: "dogs" -> ["dog"],
    "running" -> ["run"], "children" -> ["child"]. This is how a word that a user types ("dogs running")
    finds the vocabulary's lemmas ("dog", "run"). Empty when WordNet knows no other form, or is
    not installed.

    Examples
    --------
    >>> base_forms("Dogs")
    ['dog']
    """
    try:
        wordnet = load_wordnet()
    except Image2VecError:
        return []
    word = word.strip().lower()
    forms = (wordnet.morphy(word, pos) for pos in _WORDNET_POS[:3])
    return [form for form in dict.fromkeys(forms) if form and form != word]


def check_pos(pos: Sequence[str]) -> tuple[str, ...]:
    """``pos`` as a tuple of part-of-speech names, checked.

    Raises
    ------
    Image2VecError
        Empty, or a name not in :data:`PARTS_OF_SPEECH`.
    """
    pos = (pos,) if isinstance(pos, str) else tuple(pos)
    unknown = [name for name in pos if name not in PARTS_OF_SPEECH]
    if not pos or unknown:
        raise Image2VecError(f"pos must be one or more of {', '.join(PARTS_OF_SPEECH)}, "
                             f"not {', '.join(map(repr, unknown)) or 'nothing'}")
    return tuple(dict.fromkeys(pos))


def analyze_captions(captions: Sequence[Sequence[str]],
                     analyzer: CaptionAnalyzer | None = None,
                     progress: bool = True, tagged: bool = False) -> list[list[list]]:
    """Words of every caption of every image: ``docs[n][j]`` = words of caption j of image n
    (``tagged``: their (lemma, WordNet letter) pairs, every noun, adjective and verb, for
    :func:`words_of`)."""
    analyzer = analyzer or CaptionAnalyzer()
    analyze = analyzer.tagged if tagged else analyzer
    return [[analyze(c) for c in caps]
            for caps in tqdm(captions, desc="captions", unit="img", disable=not progress)]


def words_of(tagged_documents: Sequence[Sequence[Sequence[tuple[str, str]]]],
             pos: Sequence[str]) -> list[list[list[str]]]:
    """The words of the parts of speech ``pos`` in documents of (lemma, letter) pairs."""
    letters = {_WORDNET_LETTER[name] for name in check_pos(pos)}
    return [[[word for word, letter in caption if letter in letters] for caption in doc]
            for doc in tagged_documents]


class Vocabulary:
    """An ordered list of words with their counts; word v is column v of X and of D.

    Parameters
    ----------
    words : sequence of str
        Distinct words; their order defines the column index v.
    counts : sequence of int
        counts[v] = number of training images in which word v occurs.
    n_images : int
        Number of training images the counts come from.
    info : dict, optional
        JSON-serialisable provenance, saved with the words. :func:`build_vocabulary` records
        ``min_count`` (the value used), ``max_size`` and, for captions, ``tagger``
        (:attr:`CaptionAnalyzer.backend`: ``"perceptron"`` for NLTK's averaged perceptron
        tagger, ``"wordnet"`` for WordNet's parts of speech); callers add e.g. ``source``.
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int], n_images: int,
                 info: dict | None = None):
        self.words = tuple(str(w) for w in words)
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.shape != (len(self.words),):
            raise Image2VecError(f"{len(self.words)} words but {self.counts.size} counts")
        self._index = {w: v for v, w in enumerate(self.words)}
        if len(self._index) != len(self.words):
            raise Image2VecError("vocabulary words are not distinct")
        self.n_images = int(n_images)
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def __repr__(self) -> str:
        head = ", ".join(self.words[:5])
        more = ", ..." if len(self) > 5 else ""
        return f"Vocabulary(V={len(self)}, n_images={self.n_images}: {head}{more})"

    def index(self, word: str) -> int:
        """Column v of ``word``; raises KeyError if it is not in the vocabulary."""
        return self._index[word]

    def columns(self, words: Iterable[str]) -> set[int]:
        """The distinct columns of those ``words`` that are in the vocabulary."""
        return {self._index[w] for w in words if w in self._index}

    def count(self, word: str) -> int:
        """Number of training images containing ``word``."""
        return int(self.counts[self._index[word]])

    def save(self, path: str | os.PathLike) -> None:
        """Save as JSON (words, counts, n_images, info), atomically."""
        write_json(path, {"format": "image2vec-vocabulary", "version": 1,
                          "n_images": self.n_images, "info": self.info,
                          "words": list(self.words), "counts": self.counts.tolist()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Load a vocabulary saved by :meth:`save`.

        Raises
        ------
        Image2VecError
            If the file is missing, unreadable, not JSON, not a vocabulary file, or lacks or
            mangles ``words``, ``counts`` or ``n_images``.
        """
        data = read_json(path, "vocabulary file")
        if not isinstance(data, dict) or data.get("format") != "image2vec-vocabulary":
            raise Image2VecError(f"{path} is not an image2vec vocabulary file")
        missing = [key for key in ("words", "counts", "n_images") if key not in data]
        if missing:
            raise Image2VecError(f"vocabulary file {path} lacks "
                                 f"{', '.join(repr(k) for k in missing)}")
        try:
            return cls(data["words"], data["counts"], data["n_images"], data.get("info"))
        except (TypeError, ValueError) as exc:
            raise Image2VecError(f"vocabulary file {path} is malformed: {exc}") from None


def default_min_count(n_images: int) -> int:
    """The default ``min_count`` for ``n_images`` training images.

    2 on small data (fewer than :data:`SMALL_DATA_IMAGES` images), else 5 (the COCO setting).
    """
    return 2 if n_images < SMALL_DATA_IMAGES else 5


def build_vocabulary(documents: Sequence[Sequence[Sequence[str]]], min_count: int | None = None,
                     max_size: int | None = None, info: dict | None = None,
                     analyzer: CaptionAnalyzer | None = None) -> Vocabulary:
    """The words occurring in at least ``min_count`` images, most frequent first.

    Parameters
    ----------
    documents : sequence of sequence of sequence of str
        ``documents[n]`` = the word lists of image n (one per caption, or one list of tags).
    min_count : int, optional
        Keep a word when it occurs in at least this many images. Default (None):
        :func:`default_min_count` of the number of images, i.e. 2 for fewer than
        :data:`SMALL_DATA_IMAGES` (1000) images, else 5.
    max_size : int, optional
        Keep only the ``max_size`` most frequent words.
    info : dict, optional
        Provenance stored with the vocabulary (e.g. ``source``).
    analyzer : CaptionAnalyzer, optional
        The analyzer that made ``documents`` from captions: its tagger path and parts of
        speech are recorded as ``info["tagger"]`` and ``info["pos"]``. Leave out for tags.

    Returns
    -------
    Vocabulary
        Words ordered by decreasing image count, ties alphabetically; its ``info`` holds the
        ``min_count`` used, ``max_size`` and (with ``analyzer``) ``tagger``.

    Raises
    ------
    Image2VecError
        If no word is kept (the message suggests a lower ``min_count``).
    """
    if min_count is None:
        min_count = default_min_count(len(documents))
        logger.info("vocabulary: min_count %d (the default for %d images)", min_count,
                    len(documents))
    if min_count < 1:
        raise Image2VecError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 1:
        raise Image2VecError(f"max_size must be >= 1, got {max_size}")
    df = Counter(w for doc in documents for w in {w for words in doc for w in words})
    absurd = [w for w in df if len(w) > MAX_WORD_LENGTH]
    if absurd:  # longer than any real word or tag: each would cost its length in every array
        logger.warning("vocabulary: %d word(s) longer than %d characters left out (first: %.40r...)",
                       len(absurd), MAX_WORD_LENGTH, absurd[0])
        for word in absurd:
            del df[word]
    kept = sorted((w for w, c in df.items() if c >= min_count), key=lambda w: (-df[w], w))
    if max_size is not None:
        kept = kept[:max_size]
    if not kept:
        top = max(df.values(), default=0)
        raise Image2VecError(
            f"the vocabulary is empty: no word occurs in at least min_count={min_count} of the "
            f"{len(documents)} images (the most frequent occurs in {top}); "
            "lower min_count or use more images")
    info = {**(info or {}), "min_count": min_count, "max_size": max_size}
    if analyzer is not None:
        info["tagger"], info["pos"] = analyzer.backend, list(analyzer.pos)
    return Vocabulary(kept, [df[w] for w in kept], len(documents), info)


def targets(documents: Sequence[Sequence[Sequence[str]]], vocabulary: Vocabulary,
            binary: bool = False) -> sp.csr_matrix:
    """Sparse targets X (N x V): x_nv = fraction of image n's word lists that contain word v.

    Parameters
    ----------
    documents : sequence of sequence of sequence of str
        As in :func:`build_vocabulary`; words outside the vocabulary are ignored.
    vocabulary : Vocabulary
    binary : bool
        x_nv = 1 when any word list of image n contains v (the Flickr tags variant).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, V), float32, sorted indices
    """
    indptr, indices, data = [0], [], []
    for doc in documents:
        hits = Counter(v for words in doc for v in vocabulary.columns(words))
        cols = sorted(hits)
        indices.extend(cols)
        data.extend([1.0] * len(cols) if binary else [hits[v] / len(doc) for v in cols])
        indptr.append(len(indices))
    return sp.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(indices, np.int32),
                          np.asarray(indptr, np.int64)), shape=(len(documents), len(vocabulary)))
