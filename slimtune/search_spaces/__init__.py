"""Search spaces: a model plus a sensitivity analysis → per-group distributions, bounds and seeds."""

from __future__ import annotations

from slimtune.search_spaces.space import SPARSITY_PREFIX, SearchSpace, SpaceOptions, parameter_groups

__all__ = ["SPARSITY_PREFIX", "SearchSpace", "SpaceOptions", "parameter_groups"]
