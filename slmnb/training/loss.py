"""A user's training loss, named in the config as `loss: path/to/file.py:function_name`.

The function is `loss(logits, labels)` and returns a scalar tensor: the mean loss over the labelled positions.
slmnb lines the two up before calling it, so logits[:, t] (batch, positions, vocab, float32) predicts labels[:, t]
(batch, positions), and -100 marks a position without loss (the prompt and the padding under answer-only loss).
Label smoothing is then one line:

    def smooth(logits, labels):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1)

The Python API also takes the function itself (`slmnb.finetune(..., loss=smooth)`); the config keeps where it is
defined (`/abs/path/losses.py:smooth`), since config.yaml is what a resume reads. A function that no file defines
(a lambda, or one defined in a notebook cell) is refused for that reason.

The function trains; eval_loss and perplexity stay the model's cross-entropy, so runs with different losses (and a
search over them) compare on one scale. The file is checked without running it before the run folder is made
(`check`), and imported once per run in the training thread (`load`); torch is imported only there.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

from slmnb.checks import short_path, short_repr
from slmnb.errors import ConfigError

FORMAT = "path/to/file.py:function_name"
# The values a name can be bound to that are certainly not functions (`loss = 0.1`, `loss = "ce"`).
_NOT_CALLABLE = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr, ast.ListComp, ast.DictComp,
                 ast.SetComp)


def split(spec: str) -> tuple[str, str]:
    """The file and the function name of a `file.py:function` spec; ConfigError when it is not of that shape."""
    path, colon, name = spec.strip().rpartition(":")
    if not colon or not path:
        raise ConfigError(f"loss {short_repr(spec)} names no function: write it as {FORMAT}.")
    if not path.endswith(".py"):
        raise ConfigError(f"loss file {short_repr(path)} is not a .py file: write loss as {FORMAT}.")
    if not name.isidentifier():
        raise ConfigError(f"loss function {short_repr(name)} is not a Python name: write loss as {FORMAT}.")
    return path, name


def reference(function: Any) -> str:
    """The spec of a function given through the Python API: the .py file that defines it, and its name."""
    name = getattr(function, "__name__", None)
    if not isinstance(name, str):
        raise ConfigError(f"loss must be {FORMAT!r} or a function, not {type(function).__name__}: define the loss "
                          "with def in a .py file.")
    if name == "<lambda>":
        raise ConfigError("loss cannot be a lambda, since the run's config.yaml must name it for a resume: define "
                          f"it with def in a .py file and give that function, or {FORMAT!r}.")
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    file = getattr(module, "__file__", None)
    if module is None or module.__name__ == "__main__" or not isinstance(file, str) or not file.endswith(".py") \
            or getattr(module, name, None) is not function:
        raise ConfigError(f"loss function {name} is not defined at the top level of a .py file (a function from a "
                          "notebook cell is not), and the run's config.yaml must name it for a resume: move it into "
                          f"a .py file and give loss='path/to/file.py:{name}'.")
    return f"{file}:{name}"


def check(spec: str) -> None:
    """The file exists, is Python, and defines the function: read, not run, so no user code runs in the cell."""
    path, name = split(spec)
    tree = _parse(path)
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    bound: dict[str, ast.stmt] = {}  # each name by the last statement that binds it, as running the file would
    for statement in tree.body:
        for target in _bound_names(statement):
            bound[target] = statement
    if name not in bound:
        raise ConfigError(_missing(path, name, functions))
    binding = bound[name]
    if isinstance(binding, ast.ClassDef):
        raise ConfigError(f"loss {short_repr(spec)} is a class, not a function: point loss at a function "
                          "loss(logits, labels) defined with def.")
    value = getattr(binding, "value", None)
    if isinstance(binding, ast.Assign | ast.AnnAssign) and isinstance(value, _NOT_CALLABLE):
        raise ConfigError(f"loss {short_repr(spec)} is a value, not a function: point loss at a function "
                          "loss(logits, labels) defined with def.")


def load(spec: str) -> CustomLoss:
    """Import the file (once per run, under a module name of its own) and wrap its function for the Trainer."""
    path, name = split(spec)
    _parse(path)  # the file may have changed since the run started: say what is wrong with it in the same words
    module_name = f"slmnb_loss_{uuid.uuid4().hex}"
    found = importlib.util.spec_from_file_location(module_name, Path(path).expanduser())
    if found is None or found.loader is None:
        raise ConfigError(f"loss file {short_path(path)} cannot be imported: write loss as {FORMAT}.")
    module = importlib.util.module_from_spec(found)
    sys.modules[module_name] = module  # as for any import: dataclasses and pickling look the module up by name
    try:
        found.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"loss file {short_path(path)} raised {_described(exc, path)} while it was imported: fix "
                          "it, or leave loss empty for the model's own cross-entropy.") from exc
    function = getattr(module, name, None)
    if function is None:
        functions = [k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == module_name]
        raise ConfigError(_missing(path, name, functions))
    if not callable(function):
        raise ConfigError(f"loss {short_repr(spec)} is {type(function).__name__}, not a function: point loss at a "
                          "function loss(logits, labels) defined with def.")
    return CustomLoss(function, f"{Path(path).name}:{name}", path)


class CustomLoss:
    """The Trainer's compute_loss_func around a user's loss(logits, labels).

    It lines the logits up with the labels, checks the first batch's value (a scalar, finite, with a gradient),
    turns any error of the function into one sentence naming it, and scales the mean it returns for gradient
    accumulation. Under evaluation (no gradients) it gives the model's cross-entropy instead: eval_loss and
    perplexity stay comparable between runs with different losses.
    """

    def __init__(self, function: Any, name: str, path: str) -> None:
        self.function = function
        self.name = name
        self.path = str(Path(path).expanduser().resolve())
        self.calls = 0

    def __call__(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        logits = outputs.logits.float()
        # The logit at position t predicts token t + 1: shift the labels, not the logits (no copy of a
        # (batch, positions, vocab) tensor), and the last position predicts nothing.
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        if not torch.is_grad_enabled():  # the Trainer evaluates under no_grad
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        self.calls += 1
        when = "on the first batch" if self.calls == 1 else f"on batch {self.calls}"
        try:
            loss = self.function(logits, targets)
        except Exception as exc:
            raise ConfigError(f"The loss function {self.name} raised {_described(exc, self.path)} {when}: fix it, or "
                              "leave loss empty for the model's own cross-entropy.") from exc
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else \
                f"{type(loss).__name__} {short_repr(loss)}"
            raise ConfigError(f"The loss function {self.name} returned {got} {when}, not a scalar tensor: reduce "
                              "it to one number, such as the mean over the labelled positions.")
        if self.calls == 1:
            # Later batches that go non-finite are divergence, which the run reports with the step; before any
            # update, it can only be the function.
            if not torch.isfinite(loss):
                raise ConfigError(f"The loss function {self.name} returned {float(loss.detach())} on the first batch, "
                                  "before any training: check it against labels of -100, which mark positions "
                                  "without loss.")
            if not loss.requires_grad:
                raise ConfigError(f"The loss function {self.name} returned a tensor without a gradient on the first "
                                  "batch: compute it from logits with torch operations, not through .item() or a "
                                  "new tensor.")
        if num_items_in_batch is None:
            return loss
        # The Trainer adds up the micro-batches of one optimizer step and takes the sum as the step's loss (it
        # expects compute_loss_func to divide by the step's labelled count): weighting each micro-batch's mean by
        # its share of the labels makes the sum the mean over every labelled position of the step.
        return loss * ((targets != -100).sum() / num_items_in_batch)


def _parse(path: str) -> ast.Module:
    shown = short_path(path)
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        where = "" if file.is_absolute() else f" (looked in {Path.cwd()})"
        raise ConfigError(f"loss file {shown} does not exist{where}: check the path.") from None
    except IsADirectoryError:
        raise ConfigError(f"loss file {shown} is a folder: give the .py file inside it, as {FORMAT}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"loss file {shown} is not UTF-8 text: save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"loss file {shown} cannot be read ({(exc.strerror or 'it cannot be opened').lower()}): "
                          "check the path.") from None
    try:
        return ast.parse(text, filename=str(file))
    except SyntaxError as exc:
        raise ConfigError(f"loss file {shown} is not valid Python ({exc.msg} at line {exc.lineno}): fix it.") \
            from None
    except ValueError:  # a NUL byte in the source
        raise ConfigError(f"loss file {shown} is not valid Python (it holds a NUL byte): fix it.") from None


def _bound_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds (def, class, assignment, import)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(alias.asname or alias.name).partition(".")[0] for alias in node.names]
    if isinstance(node, ast.If | ast.Try):  # `if TORCH_2:` / `try: ... except ImportError:` variants
        inner = [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                 *(s for handler in getattr(node, "handlers", []) for s in handler.body)]
        return [name for stmt in inner for name in _bound_names(stmt)]
    return []


def _missing(path: str, name: str, functions: list[str]) -> str:
    shown = short_path(path)
    if not functions:
        return f"loss file {shown} defines no function: define {name}(logits, labels) in it."
    close = difflib.get_close_matches(name, functions, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"loss file {shown} defines no function {name}{hint}: use one of {', '.join(functions)}."


def _described(exc: BaseException, path: str) -> str:
    """An exception as 'ValueError at line 7 (message)': the line is the deepest one in the user's file."""
    resolved = str(Path(path).expanduser().resolve())
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename and str(Path(frame.filename).resolve()) == resolved]
    if isinstance(exc, SyntaxError) and exc.lineno and not lines:
        lines = [exc.lineno]
    where = f" at line {lines[-1]}" if lines else ""
    message = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}{where}" + (f" ({message})" if message else "")
