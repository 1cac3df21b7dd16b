"""Generation-eval: at each evaluation while training, greedy answers to a fixed sample of the eval rows, scored with
the run's metrics (slmnb.metrics), so a run shows how good its answers get and not only its eval loss.

The sample is the first eval_generate_samples rows of a seeded shuffle of the eval rows: the same rows at every
evaluation, so the points of the curve compare the same answers. Runs in the training thread, between two steps.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slmnb.config import DEFAULT_EVAL_GENERATE_SAMPLES, MAX_EVAL_NEW_TOKENS, FinetuneConfig
from slmnb.data import prompt_ids, render
from slmnb.training.arguments import inference_batch_size


@dataclass
class GenerationEval:
    names: list[str]  # the metrics computed (slmnb.metrics names or evaluate module paths)
    prompts: list[list[int]]  # token ids of the sampled rows' prompts, shortest first (less padding per batch)
    references: list[str]  # the responses the rows expect, in the same order
    max_new_tokens: int
    batch_size: int
    tokenizer: Any
    check_stop: Callable[[], None]  # raises to end the evaluation when a stop is asked for
    last: dict[str, float] = field(default_factory=dict)  # the scores of the latest evaluation
    seconds: list[float] = field(default_factory=list)  # the wall time of each evaluation's generation

    def run(self, model: Any, bf16: bool) -> dict[str, float]:
        """Answer the sampled rows with the model as it is now, score the answers and keep the scores in `last`."""
        import torch

        from slmnb import metrics

        started = time.perf_counter()
        answers: list[str] = []
        was_training = model.training
        model.eval()  # no dropout: the answers of the weights as they are
        device = next(model.parameters()).device
        try:
            # bf16 runs keep the frozen Linear weights in bf16 and the rest in fp32: the training forward runs under
            # the Trainer's autocast, and generate() calls the model outside it, so it needs its own.
            # It keeps the training's threads, unlike scoring (generate.inference_threads): between two steps the
            # cores are the training's, and 16 tones answers took 1.98 s on 2 threads against 3.37 s on 1 (fp32;
            # bf16 1.68 against 2.27 s) on a machine otherwise idle.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for start in range(0, len(self.prompts), self.batch_size):
                    self.check_stop()  # between batches, so Stop acts within one batch's time
                    answers += generate(model, self.tokenizer, self.prompts[start:start + self.batch_size],
                                        self.max_new_tokens, device)
        finally:
            model.train(was_training)
        scores = metrics.compute(self.names, answers, self.references)
        self.last = {key: float(value) for key, value in scores.values.items()}
        self.seconds.append(time.perf_counter() - started)
        return self.last


def generate(model: Any, tokenizer: Any, batch: Sequence[list[int]], max_new_tokens: int,
             device: Any = None) -> list[str]:
    """Greedy answers to a batch of prompts (token ids), each without its prompt and special tokens."""
    import torch

    width = max(len(p) for p in batch)
    # Left padding keeps every prompt's last token at the end, where generation continues.
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + list(p) for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    with torch.inference_mode():
        # use_cache: gradient checkpointing turns the model's cache off for training; decoding without it would
        # run the whole sequence again for every new token.
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def plan_generation_eval(config: FinetuneConfig, tokenizer: Any, eval_rows: Sequence[dict[str, Any]],
                         train_rows: Sequence[dict[str, Any]], encoded_train: Sequence[dict[str, list[int]]],
                         check_stop: Callable[[], None]) -> GenerationEval | None:
    """The run's generation-eval, or None when it has none: turned off, no eval rows, or no response to compare."""
    from slmnb import metrics

    samples = DEFAULT_EVAL_GENERATE_SAMPLES if config.eval_generate_samples is None else config.eval_generate_samples
    if not config.response_template or samples == 0 or not eval_rows:
        return None
    names = config.metrics
    if names is None:  # a run started before metrics were settled into its config.yaml
        names = metrics.choose([render(config.response_template, row, "response_template") for row in train_rows])[0]
    # Perplexity comes from the eval loss at every evaluation; it needs no generated answers.
    names = [name for name in names if name != "perplexity"]
    if not names:
        return None
    order = list(range(len(eval_rows)))
    random.Random(config.seed).shuffle(order)
    picked = [eval_rows[i] for i in order[:samples]]
    prompts = [prompt_ids(config, tokenizer, row) for row in picked]
    references = [render(config.response_template, row, "response_template") for row in picked]
    by_length = sorted(range(len(picked)), key=lambda i: len(prompts[i]))
    return GenerationEval(names=names, prompts=[prompts[i] for i in by_length],
                          references=[references[i] for i in by_length],
                          max_new_tokens=config.eval_max_new_tokens or answer_budget(encoded_train),
                          batch_size=inference_batch_size(config), tokenizer=tokenizer, check_stop=check_stop)


def answer_budget(encoded_train: Sequence[dict[str, list[int]]]) -> int:
    """New tokens an answer may take: the longest training response plus a quarter (at least 2 more), capped.

    The responses' lengths are what the model was taught to write; the margin lets a slightly longer answer finish
    rather than be cut, and greedy decoding stops at the end-of-text token anyway once every row has written it.
    """
    longest = max((sum(label != -100 for label in row["labels"]) for row in encoded_train), default=0)
    return max(1, min(MAX_EVAL_NEW_TOKENS, longest + max(2, longest // 4)))


def answer_length(config: FinetuneConfig, tokenizer: Any) -> int:
    """New tokens per answer after training (run.evaluate, Export.evaluate, %opt compare --eval): the run's
    eval_max_new_tokens, else answer_budget over its training responses, so an answer gets the room it got while
    training, whichever split is scored."""
    from slmnb.data import encode_rows
    from slmnb.datafiles import read_splits

    if config.eval_max_new_tokens:
        return config.eval_max_new_tokens
    return answer_budget(encode_rows(config, tokenizer, read_splits(config).get("train", []))[0])
