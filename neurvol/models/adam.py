"""Adam and a per-step learning-rate schedule, without ``torch.optim.Optimizer``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is constructed and on every
``step`` (its dynamo guards), which adds about a third to a torch process's resident
memory; each brick worker would carry it (BENCHMARKS.md, "bricked ensembles": the 512^3
memory runs). This optimizer runs the same kernels with the same arguments as
``torch.optim.Adam`` with ``fused=True`` (``torch._fused_adam_``) or, unfused on the CPU,
the same tensor operations as its single-tensor path, so a fit gives the same bits
(``tests/test_adam.py`` compares them step by step). Defaults as torch's: betas (0.9,
0.999), eps 1e-8, no weight decay, no amsgrad.

It lives with the models because a model may take optimizer steps of its own before its
fit (amgsrn places its grids, :meth:`neurvol.models.amgsrn.AMGSRN.place_grids`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Tuple

import torch

#: torch.optim.Adam's defaults.
DEFAULT_LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
#: Devices with a fused Adam kernel (``torch._fused_adam_``).
FUSED_DEVICES = ("cpu", "cuda")


class Adam:
    """Adam over parameter groups (dicts with ``params`` and optionally ``lr``), as
    ``torch.optim.Adam(groups, fused=fused)``: parameters without a gradient are skipped
    (their step count does not advance), state is created at a parameter's first step.

    fused: the fused kernel (parameters on :data:`FUSED_DEVICES`); else torch's
    single-tensor path, which ``torch.optim.Adam`` takes by default for CPU parameters
    (other devices' default, the multi-tensor path, is not reproduced: pass
    ``fused=True`` there).
    """

    def __init__(self, groups: Iterable[Dict[str, Any]], *, fused: bool):
        self.fused = bool(fused)
        self.param_groups: List[Dict[str, Any]] = []
        for group in groups:
            params = list(group["params"])
            if not self.fused and any(p.device.type != "cpu" for p in params):
                raise ValueError("the unfused Adam reproduces torch's CPU path only; "
                                 "use fused=True for parameters on other devices")
            if self.fused and any(p.device.type not in FUSED_DEVICES for p in params):
                raise ValueError(f"fused Adam runs on {FUSED_DEVICES} only")
            self.param_groups.append(dict(group, params=params,
                                          lr=float(group.get("lr", DEFAULT_LR))))
        self.state: Dict[torch.Tensor, Dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            if self.fused:
                self._fused(params, states, group["lr"])
            else:
                for p, s in zip(params, states):
                    _single_tensor_step(p, s, group["lr"])

    def _state(self, p: torch.Tensor) -> Dict[str, torch.Tensor]:
        state = self.state.get(p)
        if state is None:
            # As torch.optim.Adam: a float32 step count beside the parameter when fused, on
            # the CPU in the default dtype's precision otherwise.
            step = (torch.zeros((), dtype=torch.float32, device=p.device) if self.fused else
                    torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu"))
            state = self.state[p] = {
                "step": step,
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return state

    @staticmethod
    def _fused(params: List[torch.Tensor], states: List[Dict[str, torch.Tensor]],
               lr: float) -> None:
        # One kernel call per (device, dtype), as torch groups them.
        by: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
        for i, p in enumerate(params):
            by.setdefault((p.device, p.dtype), []).append(i)
        for idx in by.values():
            steps = [states[i]["step"] for i in idx]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                [params[i] for i in idx], [params[i].grad for i in idx],
                [states[i]["exp_avg"] for i in idx], [states[i]["exp_avg_sq"] for i in idx],
                [], steps, amsgrad=False, lr=lr, beta1=BETAS[0], beta2=BETAS[1],
                weight_decay=0.0, eps=EPS, maximize=False, grad_scale=None, found_inf=None)


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _single_tensor_step(param: torch.Tensor, state: Dict[str, torch.Tensor], lr: float) -> None:
    """torch.optim.adam's ``_single_tensor_adam`` for one real parameter (no weight decay,
    amsgrad, maximize, capturable or differentiable): the same operations in order."""
    beta1, beta2 = BETAS
    grad, exp_avg, exp_avg_sq, step_t = param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"]
    step_t += 1
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = step_t.item()
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(EPS)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class LambdaSchedule:
    """``torch.optim.lr_scheduler.LambdaLR(optimizer, factor)`` for :class:`Adam`: each
    group's lr is its initial lr times ``factor(step)``, set at construction (step 0) and
    after each :meth:`step`."""

    def __init__(self, optimizer: Adam, factor: Callable[[int], float]):
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(self.last_epoch)
