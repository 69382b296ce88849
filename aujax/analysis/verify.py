"""The explain stage's results analysed (`analyse`): the relevance-region matrix of every role and composite, the
strategies of every role under the main composite, bootstrap intervals of every μ of Table 3 and the paired
differences in μ between the main composite and each compared one. Values only; `report.write_analysis` and
`aujax.analysis.figures.write_figures` write them.
"""

import dataclasses

from aujax.analysis import bootstrap, region_matrix, strategies


@dataclasses.dataclass
class Analysis:
    """region_matrices: {(composite, role): `region_matrix.RegionMatrix`}; strategies: {role: [`AUStrategies`]} under
    the main composite; mu_intervals: {(composite, role): (low (A,), high (A,))} of Table 3's μ; differences:
    {(role, composite): `bootstrap.Difference`} of μ(main composite) − μ(composite) on the same images; aus: the AU
    set, the order of every per-AU array; confidence: the intervals' level."""

    aus: tuple[int, ...]
    confidence: float
    region_matrices: dict
    strategies: dict
    mu_intervals: dict
    differences: dict


def analyse(explained, cfg, seed: int, aus: tuple[int, ...]) -> Analysis:
    """`explained`: an `explain.Explained` whose results carry region shares and, under the main composite, small
    heatmaps; cfg: `config.analysis`; seed: `config.seed` (bootstrap samples and clustering); aus: the AU set."""
    matrices, intervals, differences, found = {}, {}, {}, {}
    for (composite, role), result in explained.results.items():
        matrices[composite, role] = region_matrix.summarise(result.shares, result.used, aus)
        intervals[composite, role] = bootstrap.mean_intervals(
                result.scores.values["mu"], result.used, result.records.subject, cfg.bootstrap_samples, seed,
                cfg.confidence)
    for role, result in explained.main.items():
        for other in explained.composites[1:]:
            compared = explained.results[other, role]
            differences[role, other] = bootstrap.paired_difference(
                    result.scores.values["mu"], compared.scores.values["mu"], result.used, compared.used,
                    result.records.subject, cfg.bootstrap_samples, seed, cfg.confidence)
        if result.small_heatmaps is not None:
            found[role] = strategies.role_strategies(result.small_heatmaps, result.used, result.scores.values["mu"],
                                                     aus, cfg.max_clusters, cfg.neighbours, seed, cfg.min_images)
    return Analysis(tuple(aus), cfg.confidence, matrices, found, intervals, differences)
