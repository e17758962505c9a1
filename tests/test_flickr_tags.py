"""experiments/flickr_tags.py: seeded Flickr-style tags whose realised noise matches its settings."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from image2vec.flickr import load_tag_tsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import flickr_tags  # noqa: E402
from flickr_tags import USER_TAGS, TagNoise, generate_tags, realised_rates  # noqa: E402


def caption_words(n=4000, per_photo=12, n_words=20000, seed=0):
    """Photos with 12 distinct caption words each from a large vocabulary (few shared words:
    the rates can be counted without collisions), each word repeated as in several captions."""
    rng = np.random.default_rng(seed)
    return [[f"w{v}" for v in rng.choice(n_words, per_photo, replace=False) for _ in range(2)]
            for _ in range(n)]


def test_the_same_seed_gives_the_same_tags_and_another_seed_others():
    words = caption_words(n=300)
    first, again, other = (generate_tags(words, TagNoise(), seed) for seed in (3, 3, 4))
    assert first.tags == again.tags and first.kinds == again.kinds
    np.testing.assert_array_equal(first.users, again.users)
    assert first.tags != other.tags


def test_realised_rates_match_the_settings():
    """400 users of exactly 10 photos (user_size 10): each rate within about 4 standard errors."""
    noise = TagNoise(user_size=10, coherence=0.0)
    words = caption_words()
    generated = generate_tags(words, noise, seed=0)
    n_users = generated.users.max() + 1
    assert n_users == 400 and np.all(np.bincount(generated.users) == 10)
    rates = realised_rates(generated, words)
    # keep: 48,000 caption words, a binomial standard error of 0.002.
    assert abs(rates["caption words kept (keep)"] - noise.keep) < 0.01
    for kind in ("place", "year", "camera", "event", "group", "technique"):
        pool = set(USER_TAGS[kind])
        has = [bool(pool & set(generated.tags[np.flatnonzero(generated.users == u)[0]])) for u in range(n_users)]
        # 400 users: a standard error of at most 0.025.
        assert abs(np.mean(has) - getattr(noise, kind)) < 0.1, kind
    # User tags are on every photo of their user.
    for u in range(n_users):
        photos = np.flatnonzero(generated.users == u)
        user_tags = [{t for t, k in zip(generated.tags[i], generated.kinds[i]) if k == "user"} for i in photos]
        assert all(tags == user_tags[0] for tags in user_tags)
    # Copies: each of `sources` photos' visual tags goes to each of the 9 other photos with
    # probability `copy` (about 2 x 3 x 9 x 0.15 = 8 a user, 3,240 in all: a standard error of 2%).
    visual = np.array([sum(k == "visual" for k in kinds) for kinds in generated.kinds])
    expected = noise.sources * visual.mean() * 9 * noise.copy * n_users
    copied = sum(k == "copied" for kinds in generated.kinds for k in kinds)
    assert abs(copied / expected - 1) < 0.1


def test_truth_is_membership_in_the_captions():
    words = caption_words(n=200)
    generated = generate_tags(words, TagNoise(), seed=1)
    for doc, tags, truth, kinds in zip(words, generated.tags, generated.truth, generated.kinds):
        assert truth == [t in set(doc) for t in tags]
        assert len(set(tags)) == len(tags)
        assert all(truth[i] for i, k in enumerate(kinds) if k == "visual")


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="--copy must be a probability"):
        generate_tags([["a"]], replace(TagNoise(), copy=1.5))
    with pytest.raises(ValueError, match="--user-size must be at least 10"):
        generate_tags([["a"]], replace(TagNoise(), user_size=3))
    assert flickr_tags.main(["/nonexistent-out-never", "--keep", "-0.1"]) == 2


def test_script_on_the_flickr8k_dev_captions(shared_data, tmp_path, capsys):
    """The real captions: the defaults give about half the tags outside the captions and a
    handful of tags a photo; the TSV is read by the loader of `image2vec train --tags`."""
    root = shared_data / "flickr8k"
    if not root.is_dir():
        pytest.skip("no Flickr8k in the shared data folder")
    assert flickr_tags.main([str(tmp_path), "--flickr8k", str(root), "--split", "dev"]) == 0
    capsys.readouterr()
    tagged = load_tag_tsv(tmp_path / "tags.tsv", root / "Flicker8k_Dataset")
    assert len(tagged) == 1000
    with open(tmp_path / "truth.tsv", newline="", encoding="utf-8") as fh:
        truth = list(csv.DictReader(fh, delimiter="\t"))
    assert len(truth) == sum(len(t) for t in tagged.tags)  # tags survive normalisation unchanged
    not_in_captions = np.mean([row["in_captions"] == "0" for row in truth])
    assert 0.35 < not_in_captions < 0.65
    assert 3 <= np.median([len(t) for t in tagged.tags]) <= 9
