"""image2vec: summarize an image in a few words.

Images and words share one d-dimensional space in which an image's embedding is the sum of the
vectors of the words that describe it, r_n ~= D x_n; sparse recovery reads the words back out.
"""

__version__ = "0.1.0"
