"""The CPU speed-ups behave as what they replace: dropout's statistics and gradient, and the OpenMP pool release."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from slmnb.config import load_config
from slmnb.training.dropout import FastDropout
from slmnb.training.engine import build_model
from slmnb.training.openmp import release_openmp_pool
from slmnb.training.prepare import settle


def test_fast_dropout_drops_p_and_scales_the_rest() -> None:
    dropout = FastDropout(0.25)
    x = torch.ones(1000, 1000, requires_grad=True)
    out = dropout(x)
    assert (out == 0).float().mean().item() == pytest.approx(0.25, abs=0.005)
    kept = out[out != 0].detach()
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.75))
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient goes through the kept elements only, scaled alike
    assert torch.equal(FastDropout(0.25).eval()(x), x)


def test_fast_dropout_repeats_under_a_seed() -> None:
    x = torch.randn(4, 64, 576)
    torch.manual_seed(7)
    first = FastDropout(0.1)(x)
    torch.manual_seed(7)
    assert torch.equal(FastDropout(0.1)(x), first)
    assert not torch.equal(FastDropout(0.1)(x), first)


def test_lora_layers_train_with_fast_dropout(tiny) -> None:
    model = build_model(settle(load_config(tiny)), "fp32")
    dropouts = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
                for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is FastDropout and d.p == 0.05 for d in dropouts)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
                    reason="needs Linux and two torch threads")
def test_release_openmp_pool_frees_a_threads_idle_workers() -> None:
    def thread_count() -> int:
        return len(os.listdir("/proc/self/task"))

    seen: dict[str, object] = {}

    def work() -> None:
        before = thread_count()
        torch.mm(torch.ones(512, 512), torch.ones(512, 512))  # a parallel region: this thread gets a pool
        seen["with pool"] = thread_count() - before
        seen["released"] = release_openmp_pool()
        seen["after"] = thread_count() - before

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"with pool": torch.get_num_threads() - 1, "released": True, "after": 0}
