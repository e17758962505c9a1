"""Flickr-style noisy tags for the Flickr8k photos, generated reproducibly from their captions.

No public copy of Flickr photos with their raw user tags can be reached here, so this script
writes tags the way studies of Flickr tagging describe them, on the real Flickr8k photos:

- **incomplete** (``--keep``): each distinct caption noun or adjective of a photo (lemmatised, as
  the project's caption analysis finds them) becomes a tag with probability ``keep``;
- **batch tagging by users**: the photos are dealt out to "users" of tens of photos
  (``--user-size``: 10 + a Poisson draw of mean ``user_size - 10``). A user tends to photograph
  one theme (``--coherence``: that share of the user's photos is drawn among the photos whose
  captions contain the user's theme word, the rest at random), and tags in batches:
  - *user tags* (``--place``, ``--year``, ``--camera``, ``--event``, ``--group``, ``--technique``:
    the probability that a user has one of each kind): a place, a year, a camera make and model,
    an event, a group tag such as "explore", a technique such as "bw" or "hdr", each put on all
    of the user's photos;
  - *copied tags* (``--copy``): the visual tags of ``--sources`` photos of the user are copied
    onto each of the user's other photos with probability ``copy`` (a real word, often not in
    that picture: the "concrete, gbr, london" kind of noise).

Defaults sit in the ranges the studies report: Kennedy et al. 2006 ("How Flickr helps us make
sense of the world", ACM MM) found roughly half of Flickr tags not describing the picture, and
Sigurbjornsson and van Zwol 2008 ("Flickr tag recommendation based on collective knowledge",
WWW) that most photos carry a handful of tags (1 to 3 for the majority, a long tail beyond).
With the defaults on the Flickr8k train split about half the tags are not in the photo's captions
and the median photo has 6 tags (``flickr_tags.md`` reports the realised rates).

Writes into OUT:

- ``tags.tsv``: ``image file <TAB> comma-separated tags``, the format ``image2vec train --tags``
  reads (:func:`image2vec.flickr.load_tag_tsv`, relative to the Flickr8k image folder);
- ``truth.tsv``: ``image <TAB> tag <TAB> in_captions (0/1) <TAB> kind`` (visual, user, copied),
  for scoring only: whether the tag is among the photo's caption words;
- ``users.tsv``: ``image <TAB> user``; ``flickr_tags.md``, ``flickr_tags.json``: the settings
  and the realised rates.

    python experiments/flickr_tags.py experiments/results/flickr_tags              # train split
    python experiments/flickr_tags.py out/tags --split dev --seed 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import common
import numpy as np

#: Non-visual user tags by kind: the words Flickr users put on a whole batch of photos.
USER_TAGS = {
    "place": ["london", "paris", "newyork", "nyc", "sanfrancisco", "california", "chicago", "boston",
              "seattle", "texas", "florida", "england", "uk", "usa", "canada", "toronto", "berlin",
              "germany", "italy", "rome", "spain", "barcelona", "france", "amsterdam", "japan",
              "tokyo", "australia", "sydney", "mexico", "brazil", "ireland", "scotland", "gbr",
              "colorado", "oregon", "portland", "austin", "denver", "vancouver", "melbourne"],
    "year": [str(year) for year in range(2004, 2011)],
    "camera": ["canon", "nikon", "sony", "olympus", "pentax", "fujifilm", "panasonic", "kodak",
               "leica", "samsung"],
    "event": ["vacation", "holiday", "trip", "weekend", "wedding", "birthday", "christmas",
              "halloween", "thanksgiving", "reunion", "roadtrip", "honeymoon", "graduation",
              "festival", "concert"],
    "group": ["explore", "interestingness", "abigfave", "supershot", "flickrsbest", "diamondclassphotographer",
              "anawesomeshot", "impressedbeauty", "top20", "500views", "naturesfinest", "goldstaraward"],
    "technique": ["bw", "blackandwhite", "hdr", "macro", "bokeh", "longexposure", "50mm", "dof",
                  "sepia", "tiltshift", "hdri", "lomo"],
}
#: Camera models by make: a user with a camera tags its make and one of its models.
CAMERA_MODELS = {
    "canon": ["eos", "350d", "400d", "rebel", "20d", "30d", "powershot"],
    "nikon": ["d70", "d80", "d200", "d50", "coolpix", "d40"],
    "sony": ["cybershot", "alpha", "dscw80"],
    "olympus": ["e500", "e510", "evolt"],
    "pentax": ["k10d", "k100d", "istds"],
    "fujifilm": ["finepix", "s5600"],
    "panasonic": ["lumix", "fz50"],
    "kodak": ["easyshare", "z740"],
    "leica": ["m6", "dlux"],
    "samsung": ["nv3", "l200"],
}
KINDS = ("visual", "user", "copied")


@dataclass(frozen=True)
class TagNoise:
    """The rates of each kind of Flickr tag noise (see the module docstring).

    Attributes
    ----------
    keep : float
        Probability that a caption word of the photo becomes one of its tags.
    user_size : float
        Mean photos per user (10 + Poisson(user_size - 10)).
    coherence : float
        Share of a user's photos drawn among those showing the user's theme word.
    place, year, camera, event, group, technique : float
        Probability that a user has a tag of that kind (a camera: its make and a model).
    sources : int
        Photos per user whose visual tags are copied.
    copy : float
        Probability that each of those tags is copied onto each other photo of the user.
    """

    keep: float = 0.25
    user_size: float = 30.0
    coherence: float = 0.5
    place: float = 0.6
    year: float = 0.4
    camera: float = 0.3
    event: float = 0.3
    group: float = 0.2
    technique: float = 0.15
    sources: int = 2
    copy: float = 0.15

    def check(self) -> None:
        """Raise ValueError naming a rate outside [0, 1], a user size below 10 or negative sources."""
        for name, value in asdict(self).items():
            if name not in ("user_size", "sources") and not 0 <= value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")
        if self.user_size < 10:
            raise ValueError(f"--user-size must be at least 10 (users of tens of photos), got {self.user_size}")
        if self.sources < 0:
            raise ValueError(f"--sources must be >= 0, got {self.sources}")


@dataclass(frozen=True)
class NoisyTags:
    """Generated tags of N photos.

    Attributes
    ----------
    tags : list of list of str
        Each photo's tags, in the order written (visual, user, copied), without repeats.
    kinds : list of list of str
        The kind of each tag (``visual``, ``user``, ``copied``; a copied or user tag that is also
        a kept caption word counts as visual).
    truth : list of list of bool
        Whether each tag is among the photo's caption words.
    users : ndarray of shape (N,)
        Each photo's user.
    """

    tags: list[list[str]]
    kinds: list[list[str]]
    truth: list[list[bool]]
    users: np.ndarray


def generate_tags(caption_words: Sequence[Sequence[str]], noise: TagNoise | None = None,
                  seed: int = 0) -> NoisyTags:
    """Flickr-style tags for photos whose caption words are ``caption_words`` (one list each).

    Parameters
    ----------
    caption_words : sequence of sequences of str
        The nouns and adjectives of each photo's captions (repeats allowed).
    noise : TagNoise, optional
        The rates (default: ``TagNoise()``).
    seed : int
        Everything drawn comes from ``numpy.random.default_rng(seed)``: the same seed and input
        give the same tags.

    Returns
    -------
    NoisyTags
    """
    noise = TagNoise() if noise is None else noise
    noise.check()
    rng = np.random.default_rng(seed)
    words = [list(dict.fromkeys(doc)) for doc in caption_words]  # distinct, first-seen order
    n = len(words)
    users = _deal_to_users(words, noise, rng)
    tags: list[dict[str, str]] = []
    for doc in words:
        kept = [w for w, u in zip(doc, rng.random(len(doc))) if u < noise.keep]
        tags.append(dict.fromkeys(kept, "visual"))
    for user in range(int(users.max()) + 1 if n else 0):
        photos = np.flatnonzero(users == user)
        for tag in _user_tags(noise, rng):
            for photo in photos:
                tags[photo].setdefault(tag, "user")
        sources = rng.choice(photos, size=min(noise.sources, len(photos)), replace=False)
        for source in sources:
            visual = [t for t, kind in tags[source].items() if kind == "visual"]
            for photo in photos[photos != source]:
                for tag, u in zip(visual, rng.random(len(visual))):
                    if u < noise.copy:
                        tags[photo].setdefault(tag, "copied")
    caption_sets = [set(doc) for doc in words]
    return NoisyTags([list(t) for t in tags], [list(t.values()) for t in tags],
                     [[tag in caption_sets[i] for tag in t] for i, t in enumerate(tags)], users)


def _deal_to_users(words: list[list[str]], noise: TagNoise, rng: np.random.Generator) -> np.ndarray:
    """Each photo's user: users of 10 + Poisson(user_size - 10) photos, ``coherence`` of each
    user's photos drawn (while any are left) among those showing the user's theme word, a word
    of a photo chosen at random among the unassigned."""
    n = len(words)
    users = np.full(n, -1)
    order = list(rng.permutation(n))  # unassigned photos, in random order
    showing: dict[str, list[int]] = {}
    for i in order:
        for w in words[i]:
            showing.setdefault(w, []).append(i)
    user = 0
    while order:
        size = 10 + int(rng.poisson(noise.user_size - 10))
        seed_photo = order[0]
        theme = words[seed_photo][int(rng.integers(len(words[seed_photo])))] if words[seed_photo] else None
        themed = [] if theme is None else [i for i in showing[theme] if users[i] < 0]
        n_themed = min(int(round(noise.coherence * size)), len(themed))
        chosen = set(themed[:n_themed])  # showing[] is in the random order: a random subset
        for i in order:
            if len(chosen) >= size:
                break
            chosen.add(i)
        users[list(chosen)] = user
        order = [i for i in order if i not in chosen]
        user += 1
    return users


def _user_tags(noise: TagNoise, rng: np.random.Generator) -> list[str]:
    """One user's batch tags: each kind with its probability (a camera brings a model too)."""
    tags = []
    for kind, pool in USER_TAGS.items():
        if rng.random() < getattr(noise, kind):
            tag = pool[int(rng.integers(len(pool)))]
            tags.append(tag)
            if kind == "camera":
                models = CAMERA_MODELS[tag]
                tags.append(models[int(rng.integers(len(models)))])
    return tags


def realised_rates(generated: NoisyTags, caption_words: Sequence[Sequence[str]]) -> dict[str, float]:
    """The noise as generated: tags per photo, the share of tags not in the captions, the share
    of caption words kept, and of the copies and user tags."""
    counts = np.array([len(t) for t in generated.tags])
    flat_truth = np.array([x for t in generated.truth for x in t], dtype=bool)
    flat_kinds = np.array([k for ks in generated.kinds for k in ks])
    distinct = sum(len(set(doc)) for doc in caption_words)
    return {
        "photos": float(len(counts)),
        "users": float(generated.users.max() + 1) if len(counts) else 0.0,
        "tags per photo (mean)": float(counts.mean()),
        "tags per photo (median)": float(np.median(counts)),
        "photos with 1 to 3 tags": float(((counts >= 1) & (counts <= 3)).mean()),
        "share of tags not in the captions": float(1 - flat_truth.mean()),
        "caption words kept (keep)": float((flat_kinds == "visual").sum() / max(distinct, 1)),
        "share of user tags": float((flat_kinds == "user").mean()),
        "share of copied tags": float((flat_kinds == "copied").mean()),
        "copied tags in the captions": float(flat_truth[flat_kinds == "copied"].mean())
        if (flat_kinds == "copied").any() else float("nan"),
    }


# -------------------------------------------------------------------------------- command line

OUTPUTS = ("tags.tsv", "truth.tsv", "users.tsv", "flickr_tags.md", "flickr_tags.json")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_folder_argument(parser)
    parser.add_argument("--split", default="train", help="Flickr8k split (default: train)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    defaults = TagNoise()
    noise = parser.add_argument_group("noise (defaults: the ranges of Kennedy et al. 2006 and "
                                      "Sigurbjornsson and van Zwol 2008)")
    for name, value in asdict(defaults).items():
        noise.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                           help=f"(default: {value})")
    return parser


def caption_words_of(root: Path, split: str) -> tuple[list[str], list[list[str]], str]:
    """The photo file names of a Flickr8k split and each photo's caption nouns and adjectives
    (the analysis of :func:`image2vec.datasets.load_caption_data`), and the tagger used."""
    from image2vec.captions import load_captions
    from image2vec.vocabulary import CaptionAnalyzer, analyze_captions

    text, images = root / "Flickr8k_text" / "Flickr8k.token.txt", root / "Flicker8k_Dataset"
    for path, what in ((text, "Flickr8k token file"), (images, "Flickr8k image folder")):
        if not path.exists():
            raise common.ExperimentError(f"{what} {path} does not exist (see the README: Data)")
    data = load_captions(text, images, split=split)
    analyzer = CaptionAnalyzer()
    documents = analyze_captions(data.captions, analyzer)
    return [str(k) for k in data.keys], [[w for caption in doc for w in caption] for doc in documents], \
        analyzer.backend


def experiment(args: argparse.Namespace) -> None:
    """Generate the tags and write them."""
    noise = TagNoise(**{name: getattr(args, name) for name in asdict(TagNoise())})
    noise.check()
    out = common.OutputFolder(args.out, OUTPUTS)
    keys, words, tagger = caption_words_of(args.flickr8k, args.split)
    generated = generate_tags(words, noise, args.seed)
    rates = realised_rates(generated, words)
    out.write_text("tags.tsv", "".join(f"{key}\t{','.join(tags)}\n" for key, tags in zip(keys, generated.tags)))
    out.write_text("truth.tsv", "image\ttag\tin_captions\tkind\n" + "".join(
        f"{key}\t{tag}\t{int(true)}\t{kind}\n" for key, tags, truth, kinds
        in zip(keys, generated.tags, generated.truth, generated.kinds)
        for tag, true, kind in zip(tags, truth, kinds)))
    out.write_text("users.tsv", "image\tuser\n" + "".join(f"{k}\t{u}\n" for k, u in zip(keys, generated.users)))
    out.write_json("flickr_tags.json", {"command": args.command, "split": args.split, "seed": args.seed,
                                        "noise": asdict(noise), "tagger": tagger, "rates": rates})
    report = (f"# Flickr-style noisy tags for Flickr8k {args.split}\n\n    {args.command}\n\n"
              f"Caption words by {tagger}; seed {args.seed}; settings: "
              + ", ".join(f"{k} {v}" for k, v in asdict(noise).items()) + ".\n\n"
              + common.markdown_table([{"rate": k, "value": v} for k, v in rates.items()],
                                      (("rate", "realised"), ("value", "value"))))
    out.write_text("flickr_tags.md", report)
    print(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
