"""LoRA's update added inside one matmul: `addmm(base output, lora_A(x), lora_B.T, alpha=scaling)`.

peft computes `result + lora_B(lora_A(x)) * scaling`: two more passes over the layer's output in the forward (the
scaling and the sum) and one in the backward (the scaling's gradient), each as large as the base layer's output.
On a CPU those element-wise passes cost more than the rank-16 matmul itself; with the sum and the scaling folded
into lora_B's matmul, a micro-batch of the demo job is 3-5% faster in fp32 and 8-11% in bf16 (BENCHMARKS.md, speed). The
loss and gradients are those of peft's path (tests/test_cpu_speed.py), and the weights and saved adapter are peft's.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def use_fused_lora(model: Any) -> None:
    """Give each of peft's LoRA Linear layers the fused forward (only the class changes, as in dropout.py)."""
    from peft.tuners.lora.layer import Linear

    fused = _fused_class()
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = fused


@functools.cache
def _fused_class() -> type:
    from peft.tuners.lora.layer import Linear

    class FusedLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            name = self._plain_adapter(args, kwargs)
            if name is None:  # merged, disabled, several adapters, DoRA, a bias: peft's own path
                return super().forward(x, *args, **kwargs)
            lora_a: Any = self.lora_A[name]
            lora_b: Any = self.lora_B[name]
            result = self.base_layer(x)
            x = self._cast_input_dtype(x, lora_a.weight.dtype)
            dropout: Any = self.lora_dropout[name]
            low = lora_a(dropout(x))  # a DroppedLoraA applies its dropout itself
            out = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]),
                              lora_b.weight.t(), alpha=self.scaling[name])
            return out.view(result.shape).to(result.dtype)

        def _plain_adapter(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
            """The one active adapter when it is plain LoRA, with nothing in the call peft's forward handles."""
            if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
                return None
            name = self.active_adapters[0]
            if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
                return None
            return name

    return FusedLoraLinear
