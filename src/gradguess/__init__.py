"""gradguess: guessed gradients by forward-mode AD, after "How to guess a gradient"
(Singhal, Cheung, Chandra, Ragan-Kelley, Tenenbaum, Poggio, Yu; arXiv 2312.04709).

Modules, one concept each (README.md lists them all): `models` (networks exposing x_i and
s_i), `guesses` (one function per guessing method), `methods` (the registry of methods),
`estimators` and `fused` (JVPs and the updates they give), `metrics`, `training`, `data`,
and the book's runtime: `settings`, `chapter`, `cache`, `ledger`, `provenance`.
"""
__version__ = "0.1.0"
