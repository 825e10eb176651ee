"""The optimizers every run uses: `make_optimizer` builds one for a single run (AdamW, SGD without
and with momentum, or torch-optimi's StableAdamW), and `StackedOptimizer` steps R replicates side
by side, every parameter shaped [R, ...] as in `models.StackedMLP`, each replicate with its own
optimizer, learning rate and weight decay, replicate r moving exactly as `make_optimizer` would
move it alone.
The stacked step is plain tensor ops with no host synchronisation, so a GPU never waits on it."""
import torch

OPTIMIZERS = ("adamw", "sgd", "sgd_momentum", "stable_adamw")


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW, SGD without and with (heavy-ball) momentum, or StableAdamW (torch-optimi)."""
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "stable_adamw":
        from optimi import StableAdamW  # Wortsman et al. 2023, as maintained in torch-optimi
        params = list(params)
        on_gpu = all(p.is_cuda for p in params)  # optimi's Triton kernels need a GPU
        return StableAdamW(params, lr=lr, weight_decay=weight_decay,
                           triton=None if on_gpu else False)
    raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")


class StackedOptimizer:
    """R replicates' optimizers side by side: every parameter is [R, ...] and replicate r steps
    exactly as `make_optimizer(name[r], [that replicate's slice], lr[r], weight_decay[r])` would
    step it alone. ``name`` is one optimizer for every replicate or one per replicate; each
    block of consecutive replicates of one optimizer is a segment ``(name, lo, hi)`` (see
    ``segments``) with its own state, updated on the views ``p[lo:hi]``, ``p.grad[lo:hi]``.
    One step updates every parameter and every segment of an optimizer together, in one set of
    ``torch._foreach_*`` calls (a stack of one optimizer keeps whole tensors, no views). With g
    the gradient, t the step, lr and wd replicate r's values:

    - adamw (torch defaults b1 0.9, b2 0.999, eps 1e-8): p <- p (1 - lr wd);
      m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
      p <- p - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)
    - sgd: p <- p - lr (g + wd p)
    - sgd_momentum: b <- mu b + (g + wd p) (b = g + wd p at the first step); p <- p - lr b
    - stable_adamw (optimi: b1 0.9, b2 0.99, eps 1e-6, debiased betas
      b_hat = (b^t - b)/(b^t - 1), so m and v are already bias-corrected):
      m <- b1_hat m + (1-b1_hat) g; v <- b2_hat v + (1-b2_hat) g^2;
      rms = sqrt(mean over p[r] of g^2 / max(v, eps^2)); lr' = lr / max(1, rms);
      p <- p (1 - lr' wd); p <- p - lr' m / (sqrt(v) + eps)
      optimi pools rms over the whole tensor; here it is pooled over each replicate's slice.
      t counts calls of `step` (optimi counts steps per parameter group).

    t is a float64 tensor on the parameters' device, so that a step is the same computation
    every time (a compiled step does not specialise on it). Replicates never mix: every
    reduction is per replicate, so a NaN in one replicate's gradient leaves the others' updates
    untouched. `step` makes no host synchronisation."""

    def __init__(self, params, name, lr, weight_decay=0.0, momentum: float = 0.9):
        names = [name] if isinstance(name, str) else list(name)
        for n in names:
            if n not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {n!r}; known optimizers: "
                                 f"{', '.join(OPTIMIZERS)}")
        self.params, self.momentum = list(params), momentum
        if not self.params or any(p.dim() == 0 for p in self.params):
            raise ValueError("need at least one parameter, each shaped [R, ...]")
        self.replicates = R = self.params[0].shape[0]
        if any(p.shape[0] != R for p in self.params):
            raise ValueError(f"every parameter needs the same leading (replicate) dimension; got "
                             f"{sorted({p.shape[0] for p in self.params})}")
        if isinstance(name, str):
            names = names * R
        elif len(names) != R:
            raise ValueError(f"name needs one optimizer or {R} (one per replicate, the "
                             f"parameters' leading dimension), got {len(names)}")
        self.name = name if isinstance(name, str) else tuple(names)  # one, or one per replicate
        self.segments = []  # (name, lo, hi): the blocks of consecutive replicates of one optimizer
        for r in range(1, R + 1):
            lo = self.segments[-1][2] if self.segments else 0
            if r == R or names[r] != names[lo]:
                self.segments.append((names[lo], lo, r))
        lr = self._per_replicate("lr", lr)
        weight_decay = self._per_replicate("weight_decay", weight_decay)
        if not (lr > 0).all():
            raise ValueError(f"learning rate must be > 0 for every replicate, got {lr.tolist()}")
        if not (weight_decay >= 0).all():
            raise ValueError(f"weight decay must be >= 0 for every replicate, "
                             f"got {weight_decay.tolist()}")
        # known on the host: a segment whose weight decays are all 0 skips the work
        decays = (weight_decay != 0).tolist()
        # one piece per parameter and segment, grouped by optimizer: its lr and wd on the
        # parameter's device and dtype, shaped [hi - lo, 1, ...] to broadcast against its slice
        self.pieces = {}
        for k, p in enumerate(self.params):
            for s, (n, lo, hi) in enumerate(self.segments):
                self.pieces.setdefault(n, []).append(_Piece(
                    k, s, lo, hi, self._broadcast(lr[lo:hi], p),
                    self._broadcast(weight_decay[lo:hi], p), any(decays[lo:hi])))
        self.state = [[{} for _ in self.segments] for _ in self.params]
        self.t = torch.zeros((), dtype=torch.float64, device=self.params[0].device)  # steps

    def _per_replicate(self, what: str, value) -> torch.Tensor:
        """One value or R values as a float64 host tensor of R values (validation happens here,
        once, on the host)."""
        values = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        if values.dim() == 0:
            values = values.expand(self.replicates)
        if values.shape != (self.replicates,):
            raise ValueError(f"{what} needs one value or {self.replicates} (one per replicate, the "
                             f"parameters' leading dimension), got shape {tuple(values.shape)}")
        return values

    @staticmethod
    def _broadcast(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.to(device=p.device, dtype=p.dtype).view(-1, *[1] * (p.dim() - 1))

    @property
    def steps(self) -> int:
        """Calls of `step` so far (read from the device)."""
        return int(self.t)

    def state_dict(self) -> dict:
        """The moments and the step count (a checkpoint's share): tensors of the parameters'
        devices."""
        return {"state": self.state, "t": self.t}

    def load_state_dict(self, saved: dict) -> None:
        """Continue from `state_dict`'s ``saved``, each tensor moved to its parameter's device."""
        self.t.copy_(saved["t"])
        self.state = [[{k: v.to(p.device) if torch.is_tensor(v) else v for k, v in s.items()}
                       for s in row] for p, row in zip(self.params, saved["state"])]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        whole = len(self.segments) == 1  # one optimizer: the whole tensors, no slicing
        for name, pieces in self.pieces.items():
            pieces = [piece for piece in pieces if self.params[piece.k].grad is not None]
            if not pieces:
                continue
            p, g = [], []
            for piece in pieces:
                param = self.params[piece.k]
                p.append(param if whole else param[piece.lo:piece.hi])
                g.append(param.grad if whole else param.grad[piece.lo:piece.hi])
            states = [self.state[piece.k][piece.s] for piece in pieces]
            getattr(self, f"_{name}")(pieces, p, g, states)

    @staticmethod
    def _moments(p, states):
        """The first and second moments, zero until a parameter's first step."""
        for param, state in zip(p, states):
            if "exp_avg" not in state:
                state["exp_avg"], state["exp_avg_sq"] = (torch.zeros_like(param),
                                                         torch.zeros_like(param))
        return [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]

    @staticmethod
    def _decay(pieces, p, factors):
        """p <- p * factor for the pieces with weight decay."""
        decayed = [(param, f) for piece, param, f in zip(pieces, p, factors) if piece.decay]
        if decayed:
            torch._foreach_mul_(*map(list, zip(*decayed)))

    def _adamw(self, pieces, p, g, states, betas=(0.9, 0.999), eps=1e-8):
        """torch.optim.AdamW's step with a per-replicate lr and wd."""
        b1, b2, t = *betas, self.t
        m, v = self._moments(p, states)
        # decoupled: before the moments, as torch does
        self._decay(pieces, p, [1 - piece.lr * piece.wd for piece in pieces])
        torch._foreach_lerp_(m, g, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)
        # addcdiv_ takes only a scalar step, so the per-replicate step size divides the denominator
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, (1 - b2 ** t) ** 0.5)
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(denom, [piece.lr / (1 - b1 ** t) for piece in pieces])
        torch._foreach_addcdiv_(p, m, denom, value=-1)

    def _sgd(self, pieces, p, g, states, momentum: bool = False):
        """torch.optim.SGD's step (dampening 0, no Nesterov)."""
        # coupled: weight decay is part of the gradient
        g = [torch.addcmul(grad, param, piece.wd) if piece.decay else grad
             for piece, param, grad in zip(pieces, p, g)]
        if momentum:
            if "momentum_buffer" not in states[0]:
                for state, grad in zip(states, g):  # torch's first step: buffer = gradient
                    state["momentum_buffer"] = grad.clone()
            else:
                buffers = [state["momentum_buffer"] for state in states]
                torch._foreach_mul_(buffers, self.momentum)
                torch._foreach_add_(buffers, g)
            g = [state["momentum_buffer"] for state in states]
        torch._foreach_addcmul_(p, g, [piece.lr for piece in pieces], value=-1)

    def _sgd_momentum(self, pieces, p, g, states):
        self._sgd(pieces, p, g, states, momentum=True)

    def _stable_adamw(self, pieces, p, g, states, betas=(0.9, 0.99), eps=1e-6):
        """optimi's StableAdamW (`_single_param_stableadamw`, its defaults), RMS per replicate."""
        t = self.t
        b1_hat, b2_hat = ((b ** t - b) / (b ** t - 1) for b in betas)  # optimi's debias_beta
        m, v = self._moments(p, states)
        torch._foreach_lerp_(m, g, [(1 - b1_hat).to(m[0].dtype)] * len(m))
        torch._foreach_mul_(v, b2_hat)
        torch._foreach_addcmul_(v, torch._foreach_mul(g, 1 - b2_hat), g)
        lrs = []
        for piece, grad, second in zip(pieces, g, v):
            rms = grad.square().div_(second.clamp(min=eps ** 2)).reshape(len(grad), -1)
            rms = rms.mean(1).sqrt().view_as(piece.lr)
            # optimi's Python max(1, rms): 1 unless rms > 1, so a NaN rms leaves lr as it is
            lrs.append(piece.lr / torch.where(rms > 1, rms, 1.0))
        # optimi's default: decoupled, scaled by the clipped lr
        self._decay(pieces, p, [1 - lr * piece.wd for piece, lr in zip(pieces, lrs)])
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(denom, lrs)
        torch._foreach_addcdiv_(p, m, denom, value=-1)


class _Piece:
    """One parameter's (``k``) share of one segment (``s``, replicates lo:hi) of an optimizer."""

    def __init__(self, k, s, lo, hi, lr, wd, decay):
        self.k, self.s, self.lo, self.hi = k, s, lo, hi
        self.lr, self.wd, self.decay = lr, wd, decay
