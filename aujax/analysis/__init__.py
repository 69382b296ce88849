"""Verification beyond μ (issue 15): pure computations on the explain stage's results (region matrix, strategies,
bootstrap intervals, faithfulness, sanity checks), one module each; the pipeline calls them and the report writes them.
"""
