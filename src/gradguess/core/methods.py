"""The method registry: every way the book obtains a gradient, one record each.

A record says what a method guesses with and how the estimators use it: its guess functions
(`gradguess.core.guesses`), whether the fused one-pass estimator can run it (it has a per-layer
guess that reads no more than s_{i+1}), whether its last layer takes the exact error vector,
what it reads on purpose (labels, the true gradient), how it guesses a prompt-tuned ViT's
prompts, its name and colour in figures, and the matmuls a step costs. A variant of another
method (matched-cosine directional descent of directional descent; Wᵀ with powered singular
values, or de-biased, of Wᵀ) names it as its ``family`` and is drawn in a shade of its colour.
The estimators, the fused path, prompt tuning, the cost model and the figures all read this table, so adding a
method is one record here plus its guess function.
"""
from dataclasses import dataclass, field
from typing import Callable

from . import guesses

# "activations": a guess of dL/ds_i per example, scaled by a JVP (paper §2.1, A.4);
# "weights": one direction over the weights, scaled by a JVP (directional descent);
# "exact": backprop; "none": nothing guessed (a baseline that trains only what is exact).
SPACES = ("activations", "weights", "exact", "none")

# A stack of runs (`gradguess.engine.stack`) puts its replicates in this order of their
# spaces, so that each kind of pass covers one block: the activation-space and weight-space
# guesses side by side (one JVP for a prompt-tuned ViT), then backprop, then the baseline.
_STACK_RANK = {"activations": 0, "weights": 1, "exact": 2, "none": 3}


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # in figures and tables: plain text (Wᵀ, not $W^\top$), so HTML tables read it too
    color: str  # a variant's: a shade of its family's
    space: str
    guess: Callable | None = None  # activations: (model, trace, generator, **options) -> [y_i]
    #                                weights: (params, generator, **options) -> [direction]
    guess_at: Callable | None = None  # one layer's guess from s_0 .. s_{i+1}: the fused path runs it
    prompt_guess: Callable | None = None  # (prompted ViT, batch, generator) -> prompts' guess
    needs_targets: bool = False  # the guess reads the labels (self-sharpening's last layer)
    exact_last: bool = False  # the last layer steps along its exact gradient, not a JVP-scaled guess
    needs_true_gradient: bool = False  # the guess reads the true gradient (matched cosine)
    matmuls: dict = field(default_factory=dict)  # estimator -> matmul units per layer of a step
    family: str = ""  # the method this one is a variant of ("": its own)

    def __post_init__(self):
        if not self.family:
            object.__setattr__(self, "family", self.name)

    @property
    def fused(self) -> bool:
        """Whether the fused estimator (`gradguess.core.fused`) runs this method."""
        return self.guess_at is not None

    @property
    def stack_rank(self) -> int:
        """This method's place in a stack of runs (`_STACK_RANK`)."""
        return _STACK_RANK[self.space]

    @property
    def tunes_prompts(self) -> bool:
        """Whether the prompt-tuning chapter runs this method."""
        return self.prompt_guess is not None or self.space in ("exact", "none")


# tab10: one hue per family of methods
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")


def shade(color: str, amount: float) -> str:
    """``color`` mixed towards white (``amount`` > 0) or black (< 0) by |amount| in [0, 1]:
    the same hue, another lightness, so a variant reads as its method's."""
    if not -1 <= amount <= 1:
        raise ValueError(f"a shade's amount lies in [-1, 1], got {amount}")
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    end = 255 if amount > 0 else 0
    return "#" + "".join(f"{round(c + abs(amount) * (end - c)):02x}" for c in rgb)


# Matmul units per layer (one unit: a [B, d_in] x [d_in, d_out] product) bound a step's time
# relative to backprop's 3: forward, backward to the input, backward to the weights.
_RECORDS = (
    Method("backprop", "backprop", _TAB10[0], "exact", matmuls={"exact": 3}),
    Method("directional", "directional descent", _TAB10[1], "weights",
           guesses.directional_guess, prompt_guess=guesses.directional_prompt_guess,
           matmuls={"reference": 4}),  # loss forward; JVP: primal and tangent W x' + W' x
    Method("matched_cosine", "matched-cosine directional", shade(_TAB10[1], -0.45), "weights",
           guesses.matched_cosine_guess, needs_true_gradient=True, family="directional"),
    Method("activation_perturbation", "activation perturbation", _TAB10[3], "activations",
           guesses.activation_perturbation_guess, guesses.activation_perturbation_at,
           prompt_guess=guesses.activation_perturbation_prompt_guess,
           matmuls={"fused": 3}),  # forward, tangent, update outer product
    Method("activation_mixing", "activation mixing", _TAB10[4], "activations",
           guesses.activation_mixing_guess, guesses.activation_mixing_at,
           matmuls={"fused": 3}),  # as activation perturbation, + the B x B mixing
    Method("w_transpose", "Wᵀ", _TAB10[5], "activations",
           guesses.w_transpose_guess, guesses.w_transpose_at,
           prompt_guess=guesses.w_transpose_prompt_guess,
           matmuls={"fused": 4, "reference": 5}),  # + the guess eps W; reference: primal again
    Method("downstream", "1-layer downstream", _TAB10[6], "activations",
           guesses.downstream_guess, guesses.downstream_at, matmuls={"fused": 4}),
    Method("self_sharpening", "self-sharpening", _TAB10[2], "activations",
           guesses.self_sharpening_guess, guesses.self_sharpening_at, needs_targets=True,
           exact_last=True),
    Method("singular_power", "Wᵀ, singular values to the power p", shade(_TAB10[5], 0.4),
           "activations", guesses.singular_power_guess, family="w_transpose"),
    Method("w_transpose_debiased", "Wᵀ de-biased", shade(_TAB10[5], -0.45), "activations",
           guesses.debiased_w_transpose_guess, family="w_transpose"),
    Method("head_only", "head only", _TAB10[7], "none"),
)
METHODS = {method.name: method for method in _RECORDS}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_names(where: Callable[[Method], bool] = lambda method: True) -> tuple[str, ...]:
    """The names of the registered methods for which ``where(method)`` holds, in order."""
    return tuple(name for name, method in METHODS.items() if where(method))
