"""gradguess: guessed gradients by forward-mode AD, after "How to guess a gradient"
(Singhal, Cheung, Chandra, Ragan-Kelley, Tenenbaum, Poggio, Yu; arXiv 2312.04709).

Modules, one concept each: `models` (networks exposing x_i and s_i), `guesses` (one
function per guessing method), `estimators` (JVPs and the updates they give), `metrics`,
`training`, `data`, `scales`.
"""
__version__ = "0.1.0"
