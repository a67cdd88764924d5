"""Training phases that choose what to prune: Smallify switches and sparse variational dropout.

Both are :class:`.trainer.Regularizer`\\ s for :func:`.trainer.finetune`: they act on the
model through forward hooks and parametrizations they install on entry (``with``) and
remove on exit, so the model's classes, tensor names and tensor order stay untouched; their
own parameters (switches, variances) live outside the model and are never stored. After the
phase, :func:`smallify_prune` / :func:`vd_prune` zero the chosen weights in place and return
the masks the pipeline holds during its masked fine-tune.

* **Smallify** (Leclerc et al. 2018, "Smallify: learning network size while training"): a
  switch ``beta_j`` per hidden neuron (see :meth:`VolumeModel.hidden_neurons`), loss
  ``MSE + lambda * sum |beta|``; the sign of every switch is tracked over the steps
  (exponential moving mean and variance); neurons whose switch keeps flipping sign are
  removed first.
* **Sparse variational dropout** (Molchanov, Ashukha, Vetrov 2017): a ``log sigma^2`` per
  weight, Gaussian multiplicative noise through the local reparameterization trick, the KL
  approximation of :func:`vd_kl`; the weights with the largest ``log alpha`` are removed.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .trainer import Regularizer

log = logging.getLogger(__name__)

#: Constants of the KL approximation of Molchanov et al. 2017 (eq. 14).
VD_K1, VD_K2, VD_K3 = 0.63576, 1.87320, 1.48695
#: log alpha is clipped to +-this in the KL term (as in the paper's code): the
#: approximation is fitted there, and beyond it the gradients only push to infinity.
VD_LOG_ALPHA_CLIP = 8.0
#: Starting log alpha of every weight: multiplicative noise of e^-3 ~ 5 % of the weight
#: (a SIREN amplifies its pre-activation noise by omega0 = 30: more noise at the start
#: only makes the first steps undo the fit).
VD_INIT_LOG_ALPHA = -6.0

# Strengths and learning rates of the two learned pruning methods, chosen by a sweep
# (BENCHMARKS.md, "pruning methods"). Smallify: the penalty is what ranks the neurons (none
# ranks them badly), and a much stronger one drives most switches to 0. VD: a lower
# learning rate leaves the variances near their start, so nothing gets pruned by them.
SMALLIFY_STRENGTH, SMALLIFY_LR, SMALLIFY_MOMENTUM = 1.0, 0.02, 0.9
VD_STRENGTH, VD_LR = 10.0, 0.05


def vd_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(q || p) of sparse VD (log-uniform prior), Molchanov et al.'s
    approximation: ``-k1 * sigmoid(k2 + k3 * log_alpha) + 0.5 * log1p(exp(-log_alpha)) + k1``
    (``softplus`` is ``log1p(exp(.))`` without overflow)."""
    return (VD_K1 - VD_K1 * torch.sigmoid(VD_K2 + VD_K3 * log_alpha)
            + 0.5 * F.softplus(-log_alpha))


def _owner(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    owner, _, attr = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def linear_tensors(model: nn.Module, names: Iterable[str]) -> Dict[str, Tuple[str, str]]:
    """Those of ``names`` that are the ``weight`` or ``bias`` of an ``nn.Linear``:
    name -> (module name, attribute)."""
    out = {}
    for name in names:
        owner, _, attr = name.rpartition(".")
        if attr in ("weight", "bias") and isinstance(_owner(model, name)[0], nn.Linear):
            out[name] = (owner, attr)
    return out


class _Context:
    """``with`` support: hooks and parametrizations are removed on exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------- Smallify
class Smallify(_Context, Regularizer):
    """Switches ``beta`` (one per input of each consumer layer of ``pairs``, starting at 1)
    multiplying the hidden neurons' outputs *after* their activation: the hook scales the
    consumer's input. That placement is exact to fold for any activation, the sine of a
    SIREN included (``sin(beta * x) != beta * sin(x)``, so a switch before the activation
    would not fold into the producer's rows): ``W_c (beta * s) = (W_c diag(beta)) s``, the
    consumer's columns scaled (:func:`smallify_prune`).

    Loss ``MSE + lam * sum |beta|`` with ``lam = strength * mse0 / n_switches``: the penalty
    starts at ``strength`` times the first batch's MSE whatever the data's scale. A switch
    whose neuron barely matters is pulled to 0 and then flips sign from step to step; the
    exponential moving mean and variance (``momentum``) of ``sign(beta)`` track that.
    """

    def __init__(self, model: nn.Module, pairs: Sequence[Tuple[str, str]], *,
                 strength: float = SMALLIFY_STRENGTH, lr: float = SMALLIFY_LR,
                 momentum: float = SMALLIFY_MOMENTUM):
        super().__init__()
        self.pairs = list(pairs)
        self.strength, self.lr, self.momentum = strength, lr, momentum
        consumers = [model.get_submodule(c) for _, c in self.pairs]
        self.betas = nn.ParameterList(nn.Parameter(torch.ones(c.in_features)) for c in consumers)
        for i, c in enumerate(consumers):
            self.register_buffer(f"sign_mean_{i}", torch.ones(c.in_features))
            self.register_buffer(f"sign_var_{i}", torch.zeros(c.in_features))
        self.lam: Optional[float] = None
        self._hooks = [c.register_forward_pre_hook(self._switch(i)) for i, c in enumerate(consumers)]

    def _switch(self, i: int):
        def hook(module: nn.Module, args: Tuple[torch.Tensor, ...]):
            return (args[0] * self.betas[i],) + tuple(args[1:])
        return hook

    def param_groups(self, lr: float) -> List[Dict[str, Any]]:
        return [{"params": list(self.betas), "lr": self.lr}] if self.pairs else []

    def penalty(self, mse: torch.Tensor) -> torch.Tensor:
        if not self.pairs:
            return mse.new_zeros(())
        if self.lam is None:
            n = sum(b.numel() for b in self.betas)
            self.lam = self.strength * max(float(mse), 1e-12) / n
        return self.lam * sum(b.abs().sum() for b in self.betas)

    @torch.no_grad()
    def after_step(self) -> None:
        m = self.momentum
        for i, b in enumerate(self.betas):
            s = torch.sign(b)
            mean, var = self.sign_stats(i)
            mean.mul_(m).add_((1 - m) * s)
            var.mul_(m).add_((1 - m) * (s - mean) ** 2)

    def sign_stats(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"sign_mean_{i}"), getattr(self, f"sign_var_{i}")

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


@torch.no_grad()
def smallify_prune(model: nn.Module, switches: Smallify, counted: Set[str],
                   fraction: float) -> Dict[str, torch.Tensor]:
    """Remove hidden neurons, ranked by the variance of their switch's sign (highest
    first; then smallest ``|beta|``, then smallest outgoing weights ``|W_c[:, j]|``), until
    the zeroed elements of the tensors ``counted`` (the k-means tensors of the layers) are
    ``fraction`` of theirs, as closely as one neuron more or less allows (the neuron that
    crosses the target is taken when that lands closer to it). Every layer keeps at least
    one neuron. Removing neuron ``j`` of ``(producer, consumer)`` zeroes row ``j`` of the
    producer's weight, its bias ``j`` and column ``j`` of the consumer's weight; the kept
    switches are folded into the consumer's columns, so the model computes what it did with
    the switches (call after the hooks are removed). Returns keep-masks (1: kept) of every
    tensor touched, counted or not, to hold the zeros while fine-tuning."""
    sd = model.state_dict()
    keep: Dict[str, torch.Tensor] = {}

    def kept(name: str) -> torch.Tensor:
        if name not in keep:
            keep[name] = torch.ones_like(sd[name], dtype=torch.bool)
        return keep[name]

    total = sum(sd[n].numel() for n in counted)
    target = fraction * total
    # Every candidate: (pair index, neuron) with its sort key.
    ranked = []
    for i, (prod, cons) in enumerate(switches.pairs):
        parts = _neuron_parts(prod, cons)
        if not any(n in counted for n, _ in parts):
            continue
        beta = switches.betas[i].detach().cpu()
        var = switches.sign_stats(i)[1].detach().cpu()
        out_norm = (sd[f"{cons}.weight"].cpu() * beta[None, :]).abs().sum(0)
        for j in range(beta.numel()):
            ranked.append((-float(var[j]), abs(float(beta[j])), float(out_norm[j]), i, j))
    ranked.sort()
    alive = {i: switches.betas[i].numel() for i in range(len(switches.pairs))}
    removed: List[Tuple[int, int]] = []
    zeros = 0
    for _, _, _, i, j in ranked:
        if zeros >= target:
            break
        if alive[i] <= 1:
            continue
        prod, cons = switches.pairs[i]
        gain = 0
        for name, axis in _neuron_parts(prod, cons):
            if name in counted and name in sd:
                gain += int(kept(name).select(axis, j).sum()) if sd[name].dim() > 1 \
                    else int(kept(name)[j])
        if zeros + gain > target and (zeros + gain - target) > (target - zeros):
            break
        for name, axis in _neuron_parts(prod, cons):
            if name in sd:
                m = kept(name)
                if m.dim() > 1:
                    m.select(axis, j).fill_(False)
                else:
                    m[j] = False
        zeros += gain
        alive[i] -= 1
        removed.append((i, j))
    if zeros < target - max((g for g in _largest_neuron(switches.pairs, sd, counted)), default=0):
        log.warning("smallify: removing neurons zeroed %d of %d weights, short of the %.3g "
                    "asked (every layer keeps a neuron)", zeros, total, fraction)
    for i, (prod, cons) in enumerate(switches.pairs):
        w = sd[f"{cons}.weight"]
        w.mul_(switches.betas[i].detach().to(w)[None, :])
    for name, m in keep.items():
        sd[name].masked_fill_(~m.to(sd[name].device), 0.0)
    return {name: m.to(sd[name].dtype) for name, m in keep.items()}


def _largest_neuron(pairs: Sequence[Tuple[str, str]], sd: Mapping[str, torch.Tensor],
                    counted: Set[str]) -> Iterable[int]:
    """Counted elements one neuron of each pair owns."""
    for prod, cons in pairs:
        yield sum(sd[n].numel() // sd[n].shape[axis] for n, axis in _neuron_parts(prod, cons)
                  if n in counted)


def _neuron_parts(prod: str, cons: str) -> List[Tuple[str, int]]:
    """(tensor, axis) that neuron ``j`` of a pair owns: index ``j`` along ``axis`` (the
    producer's weight row and bias, the consumer's weight column)."""
    return [(f"{prod}.weight", 0), (f"{prod}.bias", 0), (f"{cons}.weight", 1)]


# ------------------------------------------------------------------ variational dropout
class _WeightNoise(nn.Module):
    """Parametrization of a tensor that is not a Linear layer's (hash tables, k-means-coded
    grids, ...): ``w + sigma * eps`` while training, ``w`` otherwise (the plain
    reparameterization; no layer output to apply the local one to)."""

    def __init__(self, owner: "VariationalDropout", name: str):
        super().__init__()
        # Plain attributes, not submodules: the model must not see the regularizer's tensors.
        self.__dict__["_vd"] = owner
        self._name = name

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return w
        log_s2 = self._vd.log_sigma2[self._vd.key(self._name)]
        return w + torch.exp(0.5 * log_s2) * self._vd.noise(w.shape, w)


class VariationalDropout(_Context, Regularizer):
    """A ``log sigma^2`` per element of each tensor of ``names`` (start: ``log alpha =``
    :data:`VD_INIT_LOG_ALPHA`). Linear layers get the local reparameterization trick: a
    forward hook adds ``sqrt(x^2 sigma_W^2^T + sigma_b^2) * eps`` to the output ``x W^T + b``;
    other tensors get ``w + sigma * eps`` (:class:`_WeightNoise`). Noise only while the
    model is in training mode, from a private generator (``seed``), so runs repeat and no global RNG moves.

    Penalty ``kl_weight * sum KL(log alpha)`` (:func:`vd_kl`). The variational objective
    per voxel is ``MSE / (2 s^2) + KL / N`` (N voxels, ``s^2`` the likelihood's noise
    variance); times ``2 s^2`` with ``s^2`` the first batch's MSE it is
    ``MSE + 2 * mse0 * KL / N``: ``kl_weight = strength * 2 * mse0 / N``.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, strength: float = VD_STRENGTH,
                 lr: float = VD_LR, seed: int = 0):
        super().__init__()
        self.strength, self.lr, self.seed = strength, lr, seed
        self.__dict__["_model_ref"] = model     # not a submodule: .to() must not move it
        sd = model.state_dict()
        self.names = list(names)
        self.log_sigma2 = nn.ParameterDict({
            self.key(n): nn.Parameter(torch.log(sd[n].detach().float() ** 2 + 1e-16) + VD_INIT_LOG_ALPHA)
            for n in self.names})
        self.kl_weight: Optional[float] = None
        self.voxels = 1
        self._gens: Dict[str, torch.Generator] = {}
        self._hooks = []
        self._parametrized: List[Tuple[nn.Module, str, List[str]]] = []
        linear = linear_tensors(model, self.names)
        by_layer: Dict[str, Dict[str, str]] = {}
        for n, (owner, attr) in linear.items():
            by_layer.setdefault(owner, {})[attr] = n
        for owner, attrs in by_layer.items():
            module = model.get_submodule(owner)
            self._hooks.append(module.register_forward_hook(self._local_noise(attrs)))
        for n in self.names:
            if n in linear:
                continue
            module, attr = _owner(model, n)
            order = list(module._parameters)
            parametrize.register_parametrization(module, attr, _WeightNoise(self, n))
            self._parametrized.append((module, attr, order))

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "/")      # ParameterDict keys may not contain dots

    def noise(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        dev = str(like.device)
        if dev not in self._gens:
            self._gens[dev] = torch.Generator(like.device).manual_seed(self.seed)
        return torch.randn(tuple(shape), generator=self._gens[dev], device=like.device,
                           dtype=like.dtype)

    def _local_noise(self, attrs: Mapping[str, str]):
        def hook(module: nn.Module, args: Tuple[torch.Tensor, ...], out: torch.Tensor):
            if not module.training:         # the model's mode: noise only while it trains
                return out
            var = out.new_zeros(())
            if "weight" in attrs:
                s2 = torch.exp(self.log_sigma2[self.key(attrs["weight"])])
                var = F.linear(args[0] * args[0], s2)
            if "bias" in attrs:
                var = var + torch.exp(self.log_sigma2[self.key(attrs["bias"])])
            return out + torch.sqrt(var + 1e-16) * self.noise(out.shape, out)
        return hook

    def log_alpha(self, model: nn.Module, name: str) -> torch.Tensor:
        """``log sigma^2 - log theta^2`` of tensor ``name`` (unclipped)."""
        module, attr = _owner(model, name)
        if parametrize.is_parametrized(module, attr):
            theta = module.parametrizations[attr].original
        else:
            theta = getattr(module, attr)
        ls2 = self.log_sigma2[self.key(name)]
        return ls2 - torch.log(theta.to(ls2) ** 2 + 1e-16)

    def param_groups(self, lr: float) -> List[Dict[str, Any]]:
        return [{"params": list(self.log_sigma2.values()), "lr": self.lr}] if self.names else []

    def begin(self, voxels: int) -> None:
        self.voxels = max(1, int(voxels))

    def penalty(self, mse: torch.Tensor) -> torch.Tensor:
        if not self.names:
            return mse.new_zeros(())
        if self.kl_weight is None:
            self.kl_weight = self.strength * 2.0 * max(float(mse), 1e-12) / self.voxels
        kl = sum(vd_kl(self.log_alpha(self._model_ref, n).clamp(-VD_LOG_ALPHA_CLIP, VD_LOG_ALPHA_CLIP)).sum()
                 for n in self.names)
        return self.kl_weight * kl

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for module, attr, order in reversed(self._parametrized):
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            restore_order(module, order)
        self._parametrized = []


@torch.no_grad()
def vd_prune(model: nn.Module, vd: VariationalDropout, fraction: float) -> Dict[str, torch.Tensor]:
    """Zero ``int(fraction * n)`` elements of each of ``vd``'s tensors (``n`` elements):
    those with the largest ``log alpha`` (call after the phase: hooks removed), ties (and a
    phase that did not train) broken by the smallest ``|theta|``, as magnitude pruning
    chooses. Returns keep-masks (1: kept)."""
    sd = model.state_dict()
    masks: Dict[str, torch.Tensor] = {}
    for name in vd.names:
        t = sd[name]
        n = int(fraction * t.numel())
        if n < 1:
            continue
        la = vd.log_alpha(model, name).detach().cpu().double().numpy().reshape(-1)
        mag = t.detach().cpu().abs().double().numpy().reshape(-1)
        order = np.lexsort((mag, -la))[:n]          # last key first: log alpha descending
        keep = torch.ones(t.numel(), dtype=t.dtype)
        keep[torch.from_numpy(order)] = 0
        keep = keep.reshape(t.shape).to(t.device)
        t.masked_fill_(keep == 0, 0.0)
        masks[name] = keep
    return masks


def restore_order(module: nn.Module, names: List[str]) -> None:
    """Removing a parametrization re-registers the parameter at the end: put the module's
    parameters back in ``names`` order, which is the order of the model's tensors in files."""
    params = module._parameters
    module._parameters = type(params)((n, params[n]) for n in names)
