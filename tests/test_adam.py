"""neurvol's Adam (neurvol.models.adam) against torch.optim.Adam: the same bits, step by
step, fused and unfused, with a LambdaLR-style schedule and parameters that go without
gradients for a while (amgsrn freezes its transforms part of the fit); and a brick fit
never imports torch._dynamo (torch.optim.Optimizer would: ~70 MiB per worker)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from neurvol.fit.trainer import warmup_cosine
from neurvol.models.adam import Adam, LambdaSchedule

STEPS = 40


def _params(seed: int):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 7, 3), (4,), (3, 4), (3, 4), (16, 9), (1,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _groups(params):
    # Three groups with their own lr (as amgsrn's grids, transforms and MLP) and one
    # without (torch's default lr).
    return [{"params": params[:1], "lr": 9e-3}, {"params": params[1:4], "lr": 1.5e-4},
            {"params": params[4:5], "lr": 3e-3}, {"params": params[5:]}]


def _train(make_opt, make_sched, seed: int):
    params = _params(seed)
    opt = make_opt(_groups(params))
    sched = make_sched(opt)
    gen = torch.Generator().manual_seed(seed + 1)
    history = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = sum((p * torch.randn(p.shape, generator=gen)).square().sum() for p in params)
        loss.backward()
        if 10 <= step < 25:          # frozen for a while: no gradient, no step
            params[2].grad = None
            params[3].grad = None
        if step % 7 == 3:            # a gradient of exact zeros still counts as a step
            params[1].grad.zero_()
        opt.step()
        sched.step()
        history.append([p.detach().clone() for p in params])
    state = [(opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone(),
              float(opt.state[p]["step"])) for p in params]
    return history, state


@pytest.mark.parametrize("fused", [True, False])
def test_adam_gives_torchs_bits(fused):
    factor = warmup_cosine(STEPS, 0.1)
    # fused=None is torch's default: the single-tensor path on the CPU.
    ref = _train(lambda g: torch.optim.Adam(g, fused=True if fused else None),
                 lambda o: torch.optim.lr_scheduler.LambdaLR(o, factor), seed=3)
    ours = _train(lambda g: Adam(g, fused=fused), lambda o: LambdaSchedule(o, factor), seed=3)
    for step, (a, b) in enumerate(zip(ref[0], ours[0])):
        for i, (x, y) in enumerate(zip(a, b)):
            assert torch.equal(x, y), (step, i)
    for (m1, v1, s1), (m2, v2, s2) in zip(ref[1], ours[1]):
        assert torch.equal(m1, m2) and torch.equal(v1, v2) and s1 == s2
    # The frozen parameters took fewer steps (the check above would pass vacuously if no
    # parameter had ever been skipped).
    assert ours[1][2][2] == STEPS - 15 and ours[1][0][2] == STEPS


def test_schedule_sets_lr_as_lambdalr():
    params = _params(0)
    opt = Adam(_groups(params), fused=True)
    sched = LambdaSchedule(opt, lambda step: 0.5 ** step)
    assert [g["lr"] for g in opt.param_groups] == [9e-3 * 1.0, 1.5e-4, 3e-3, 1e-3]
    sched.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [9e-3 * 0.25, 1.5e-4 * 0.25, 3e-3 * 0.25,
                                                   1e-3 * 0.25]


def test_unfused_refuses_parameters_off_the_cpu():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match="fused=True"):
        Adam([{"params": [p]}], fused=False)


def test_a_brick_fit_does_not_import_dynamo():
    # In a fresh process (pytest or another test may have imported it already): an
    # amgsrn brick job with a rate-aware pilot (its placement, fit, fine-tuning and
    # coding) and a fine-tuned fvsrn fit, then check sys.modules.
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import neurvol
        from neurvol.fit import FitSettings, fit
        from neurvol.models import get_architecture
        import torch
        z, y, x = np.meshgrid(*[np.linspace(0, 1, 40)] * 3, indexing="ij")
        vol = (np.sin(6 * x) * np.cos(5 * y) + z * z).astype(np.float32)
        neurvol.encode(vol, ratio=10, brick=20, steps=30, arch="amgsrn", quiet=True)
        arch = get_architecture("fvsrn")
        model = arch.build(arch.solve((24, 24, 24), 2000, {}))
        fit(model, torch.from_numpy(vol / 2 + 0.5), FitSettings(steps=5, batch=256))
        print("dynamo" if "torch._dynamo" in sys.modules else "clean")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"
