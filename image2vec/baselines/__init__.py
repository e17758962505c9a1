"""Baselines scored on the same harness as the Image2Vec models (DESIGN.md sections 5 and 6)."""

from image2vec.baselines.common_space import CommonSpaceSummarizer
from image2vec.baselines.cvs import CVS, MCVS, RVS
from image2vec.baselines.imnet_glove import ImnetGlove
from image2vec.baselines.linear import MeanVectorCCA, ReducedRankRidge
from image2vec.baselines.neighbors import FrequencyPrior, NearestNeighborTransfer

__all__ = ["CommonSpaceSummarizer", "CVS", "MCVS", "RVS", "FrequencyPrior", "ImnetGlove",
           "MeanVectorCCA", "NearestNeighborTransfer", "ReducedRankRidge"]
