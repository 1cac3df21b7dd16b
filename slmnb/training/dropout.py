"""LoRA input dropout for CPU training: a faster mask, and no dropped copies kept for the backward pass.

torch's dropout draws its mask with `bernoulli_`, which takes 1.6 ms for one LoRA input of a batch of 8 x 64 tokens
of the embedded model: 12% of a LoRA q/v step here. `keep_mask` draws the same kind of mask from raw random bits in
about 0.5 ms (see BENCHMARKS.md).

Memory: peft computes `lora_A(dropout(x))`, so autograd keeps, for every LoRA layer, the dropped copy of x (lora_A's
input) and the float mask (the multiplication's): 8 bytes per input value, and q, k, v, gate and up each keep their
own although they share one x. `DroppedLoraA` does the dropout inside lora_A and keeps x itself (one tensor for all
the layers that read it) and the mask as bool (1 byte), recomputing the dropped copy in the backward pass (the
lora_A product is 1/36 of its base layer's at rank 16 of 576). The gradients are bitwise those of the plain path.
"""

from __future__ import annotations

from typing import Any

import torch


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A bool mask keeping each value with probability 1 - p (exact to 1/65536), from 16 random bits per value.

    The bits come from torch's generator, so `set_seed` repeats them and gradient checkpointing redraws the same.
    """
    words = (x.numel() + 3) // 4  # four 16-bit draws per int64
    bits = torch.empty(words, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
    bits = bits.view(torch.int16)[: x.numel()].view(x.shape)
    return bits >= round(-32768 + p * 65536)


def _dropped(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    return x * keep.to(x.dtype).mul_(scale)


class FastDropout(torch.nn.Dropout):
    """Dropout with `keep_mask`, for the LoRA layers `DroppedLoraA` cannot take over."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        return _dropped(x, keep_mask(x, self.p), 1.0 / (1.0 - self.p))


class _DropThenProject(torch.autograd.Function):
    """linear(dropout(x), weight), saving x, weight and the bool mask instead of the dropped copy and a float mask."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(x, weight, keep)
        ctx.scale = scale
        return torch.nn.functional.linear(_dropped(x, keep, scale), weight)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # the recomputation runs under the forward's autocast, as it did
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, keep = ctx.saved_tensors
        need_x, need_weight = ctx.needs_input_grad[:2]
        # Recompute the forward with autograd on and differentiate it: the same operations autograd would have
        # run on the plain path, so the same gradients bit for bit.
        with torch.enable_grad():
            x = x.detach().requires_grad_(need_x)
            weight = weight.detach().requires_grad_(need_weight)
            out = torch.nn.functional.linear(_dropped(x, keep, ctx.scale), weight)
        wanted = [t for t in (x, weight) if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        return (next(grads) if need_x else None), (next(grads) if need_weight else None), None, None


class DroppedLoraA(torch.nn.Linear):
    """A LoRA A projection that applies its layer's dropout itself (see the module's docstring).

    Only the class changes (`p` is added): the weight, its name in the state dict and the saved adapter stay.
    """

    p: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.bias is not None:
            return super().forward(x)
        if self.p == 1.0:
            return super().forward(torch.zeros_like(x))
        return _DropThenProject.apply(x, self.weight, keep_mask(x, self.p), 1.0 / (1.0 - self.p))


def use_fast_dropout(model: Any) -> None:
    """Move each LoRA layer's dropout into its A projection (DroppedLoraA), or else swap it for FastDropout."""
    for module in model.modules():
        dropouts, projections = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is not torch.nn.Dropout:
                continue
            projection = projections[name] if isinstance(projections, torch.nn.ModuleDict) and name in projections \
                else None
            if type(projection) is torch.nn.Linear and projection.bias is None:
                projection.__class__ = DroppedLoraA
                projection.p = dropout.p
                dropouts[name] = torch.nn.Identity()
            else:
                dropouts[name] = FastDropout(dropout.p)
