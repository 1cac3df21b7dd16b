"""The CPU speed-ups behave as what they replace: dropout's statistics and gradient, the LoRA layers' dropout that
keeps less for the backward pass, the output layer's contiguous input, and the OpenMP pool release."""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext

import pytest
import torch

from slmnb.config import load_config
from slmnb.training.dropout import DroppedLoraA, FastDropout
from slmnb.training.engine import Collator, build_model, trim_to_labelled_tail
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


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]


def test_lora_layers_apply_their_dropout_inside_lora_a(tiny) -> None:
    layers = lora_layers(build_model(settle(load_config(tiny)), "fp32"))
    assert layers
    for layer in layers:
        assert all(type(a) is DroppedLoraA and a.p == 0.05 for a in layer.lora_A.values())
        assert all(type(d) is torch.nn.Identity for d in layer.lora_dropout.values())


def as_plain_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with each LoRA layer's dropout in front of lora_A again, as peft builds it (same mask draws)."""
    for layer in lora_layers(model):
        for name, projection in layer.lora_A.items():
            layer.lora_dropout[name] = FastDropout(projection.p)
            projection.__class__ = torch.nn.Linear
    return model


def one_step(tiny: dict, plain: bool, **fields) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, LoRA gradients and the activation bytes autograd keeps for backward: one batch of the tiny model."""
    config = settle(load_config({**tiny, "lora_dropout": 0.3, "target_modules": "all-linear", **fields}))
    model = build_model(config, "fp32")
    if plain:
        as_plain_dropout(model)
    model.train()
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})  # as the Trainer does (arguments.py)
        model.enable_input_require_grads()
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, 200, (n,), generator=generator).tolist() for n in (12, 9, 16, 5)]
    rows = [{"input_ids": r, "labels": [-100] * (len(r) - 2) + r[-2:]} for r in ids]
    batch = trim_to_labelled_tail(Collator(0)(rows))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:  # the layers' activations: not the weights, not the output layer's
        if t.untyped_storage().data_ptr() not in weights and model.config.vocab_size not in t.shape:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(storages.values())


def test_dropout_inside_lora_a_gives_the_same_gradients_and_keeps_less(tiny) -> None:
    loss, grads, kept = one_step(tiny, plain=False)
    plain_loss, plain_grads, plain_kept = one_step(tiny, plain=True)
    assert grads and grads.keys() == plain_grads.keys()
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads), "the gradients differ from the plain path's"
    # q/k/v and gate/up share one input instead of a dropped copy each, masks are bool instead of float
    assert kept < 0.8 * plain_kept, (kept, plain_kept)


def test_dropout_inside_lora_a_redraws_the_same_masks_under_gradient_checkpointing(tiny) -> None:
    loss, grads, _ = one_step(tiny, plain=False)
    checkpointed_loss, checkpointed, _ = one_step(tiny, plain=False, gradient_checkpointing=True)
    assert torch.equal(loss, checkpointed_loss)
    assert all(torch.allclose(grads[n], checkpointed[n], rtol=1e-5, atol=1e-7) for n in grads)


def test_the_output_layer_gets_a_contiguous_input_for_the_last_positions(tiny) -> None:
    from slmnb.models import load_model

    model = load_model(tiny["model_name_or_path"])
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.tensor([[5, 17, 33, 2, 9], [8, 1, 4, 40, 6]])  # two rows: their last positions are a strided slice
    with torch.no_grad():
        full = model(input_ids=ids).logits
        tail = model(input_ids=ids, logits_to_keep=2).logits
    assert seen == [True, True]  # a strided slice would go through a batched matmul, 3x slower
    assert torch.allclose(tail, full[:, -2:], atol=1e-5)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
                    reason="needs Linux and two torch threads")
def test_release_openmp_pool_frees_a_threads_idle_workers() -> None:
    def threads() -> set[str]:
        return set(os.listdir("/proc/self/task"))

    seen: dict[str, object] = {}

    def work() -> None:
        # Thread ids, not counts: a thread another test left running may start or end meanwhile; the pool's
        # workers are the ids that the parallel region brought, and those must be gone after the release.
        before = threads()
        torch.mm(torch.ones(512, 512), torch.ones(512, 512))  # a parallel region: this thread gets a pool
        workers = threads() - before
        seen["with pool"] = len(workers)
        seen["released"] = release_openmp_pool()
        seen["after"] = len(workers & threads())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"with pool": torch.get_num_threads() - 1, "released": True, "after": 0}


def bottom_calls(model: torch.nn.Module) -> list[int]:
    """A list that grows by one each time the first decoder layer's MLP runs."""
    calls: list[int] = []
    model.base_model.model.model.layers[0].mlp.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


def loss_and_grads(model: torch.nn.Module, inputs: dict, prefix=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    inputs = trim_to_labelled_tail(inputs)
    torch.manual_seed(0)  # the LoRA layers' dropout masks alike on every pass
    with prefix.rows(inputs) if prefix is not None else nullcontext():
        loss = model(**inputs).loss
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    return loss.detach(), grads


def test_the_frozen_bottom_layers_run_once_per_row_and_give_the_same_loss_and_gradients(tiny) -> None:
    from slmnb.data import encode_rows, load_data
    from slmnb.models import load_tokenizer
    from slmnb.training.prefix import frozen_prefix

    config = settle(load_config({**tiny, "layers_to_transform": "1"}))  # LoRA on the top of the 2 layers only
    model = build_model(config, "fp32")
    model.train()
    prefix = frozen_prefix(model)
    assert prefix is not None and prefix.depth == 1
    tokenizer = load_tokenizer(config.model_name_or_path)
    rows = encode_rows(config, tokenizer, load_data(config).train[:8])[0]
    rows[1]["input_ids"] = rows[1]["input_ids"][:-6] + rows[1]["input_ids"][-4:]  # lengths differ: padding moves
    rows[1]["labels"] = rows[1]["labels"][:-6] + rows[1]["labels"][-4:]
    collate, calls = Collator(tokenizer.pad_token_id), bottom_calls(model)

    loss_and_grads(model, collate(rows[:4]), prefix)
    loss_and_grads(model, collate(rows[4:]), prefix)
    assert len(calls) == 2  # the first pass over each row runs the bottom layer
    regrouped = collate([rows[5], rows[1], rows[6], rows[2]])  # the same rows with other neighbours and padding
    plain = loss_and_grads(model, regrouped)
    assert len(calls) == 3
    kept = loss_and_grads(model, regrouped, prefix)
    assert len(calls) == 3  # every row was kept: the bottom layer did not run
    assert torch.allclose(kept[0], plain[0], rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(kept[1], plain[1], strict=True))

    loss_and_grads(model, collate([*rows[:2], rows[0]]), prefix)  # a row twice in one batch is kept once
    model.eval()
    with torch.no_grad():
        model(**collate(rows[:4]))  # generation and other forwards outside the loss compute as usual
    assert len(calls) == 4


@pytest.mark.parametrize("change", ["every layer trained", "trainable embeddings", "attention dropout"])
def test_no_frozen_prefix_where_it_could_change_the_result(tiny, change: str) -> None:
    from slmnb.training.prefix import frozen_prefix

    fields = {} if change == "every layer trained" else {"layers_to_transform": "1"}
    model = build_model(settle(load_config({**tiny, **fields})), "fp32")
    if change == "trainable embeddings":
        model.get_input_embeddings().weight.requires_grad_(True)
    elif change == "attention dropout":
        model.config.attention_dropout = 0.1
    assert frozen_prefix(model) is None


class TupleLayer(torch.nn.Module):
    """A decoder layer in the older style: it returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.linear(hidden_states),)


def test_the_frozen_prefix_steps_aside_for_layers_that_return_tuples() -> None:
    from slmnb.training.prefix import FrozenPrefix

    layers = torch.nn.ModuleList([TupleLayer(), TupleLayer()])
    prefix = FrozenPrefix(layers, depth=1)
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    x = torch.randn(1, 3, 4)
    for _ in range(2):
        with prefix.rows(inputs):
            out = layers[0](x)
        assert isinstance(out, tuple) and torch.equal(out[0], layers[0].linear(x))  # computed, not handed over
    assert not prefix.kept


def test_a_run_keeping_its_frozen_bottom_learns_what_a_run_without_it_does(tiny, workdir, monkeypatch) -> None:
    import slmnb
    from slmnb.training import engine

    config = {**tiny, "layers_to_transform": "1", "max_steps": 12}  # 96 rows over 43: three epochs

    def losses(name: str) -> list[float]:
        run = slmnb.finetune(config, name=name).wait()
        assert run.status == "finished"
        return [m["loss"] for m in run.metrics if "loss" in m] + [m["eval_loss"] for m in run.metrics
                                                                     if "eval_loss" in m]

    made, real = [], engine._frozen_prefix
    monkeypatch.setattr(engine, "_frozen_prefix", lambda *args: made.append(real(*args)) or made[-1])
    kept = losses("kept")
    assert made[0] is not None and len(made[0].kept) == 48  # the 43 training rows and the 5 held out
    monkeypatch.setattr(engine, "_frozen_prefix", lambda *args: None)
    assert kept == pytest.approx(losses("plain"), rel=1e-5)
