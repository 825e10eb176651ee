"""gradguess: guessed gradients by forward-mode AD, after "How to guess a gradient"
(Singhal, Cheung, Chandra, Ragan-Kelley, Tenenbaum, Poggio, Yu; arXiv 2312.04709).

Four layers, each a subpackage (README.md lists every module): `core` (networks, guesses, the
method registry, estimators, metrics, data), `engine` (runs trained alone or side by side,
resumably), `analysis` (what the chapters compute from runs) and `book` (the book's runtime:
settings, scales, rules, ledger, run store, provenance, chapter, report, plotting).
"""
__version__ = "0.1.0"
