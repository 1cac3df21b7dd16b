"""Validate Olive run configs with Olive's own classes: run by tests/test_olive_writer.py with the Python of a venv
that has olive-ai (never slmnb's), as `python olive_validate.py CONFIG...` from the configs' folder.

For each config it does what `olive run` does before any model is trained: parse the RunConfig, build every pass's
config class for the CPU, check the LoRA training_args as Olive's trainer arguments (no argument dropped), load each
data config's rows with datasets, and pre-process them with the model's tokenizer where it is a local folder.
Prints one line per config: "ok PATH" or "FAIL PATH: reason"; exits 1 if any failed.
"""

from __future__ import annotations

import copy
import logging
import sys
import traceback
from pathlib import Path


def check(path: str) -> None:
    from olive.common.config_utils import validate_config
    from olive.data.component.text_generation import TextGenParams
    from olive.hardware.accelerator import AcceleratorSpec
    from olive.package_config import OlivePackageConfig
    from olive.passes.pytorch.lora import HFTrainingArguments
    from olive.workflows.run.config import RunConfig

    config = RunConfig.parse_file_or_obj(path)
    package = OlivePackageConfig.parse_file_or_obj(OlivePackageConfig.get_default_config_path())
    cpu = AcceleratorSpec(accelerator_type="cpu", execution_provider="CPUExecutionProvider")
    for name, passes in config.passes.items():
        for run_pass in passes:
            values = run_pass.config or {}
            pass_class = package.import_pass_module(run_pass.type)
            # Olive warns about a key its pass does not have and goes on without it: here that is a failure.
            unknown = set(values) - set(pass_class.default_config(cpu))
            if unknown:
                raise ValueError(f"passes.{name} has keys {run_pass.type} does not know: {sorted(unknown)}")
            # generate_config drops unknown training_args from the dict it is given: give it a copy.
            checked = pass_class.generate_config(cpu, copy.deepcopy(values), disable_search=True)
            args = values.get("training_args")
            if args is not None:
                # Olive drops (with a warning) arguments the Trainer does not know: none may be dropped.
                typed = validate_config(dict(args), HFTrainingArguments)
                kept = set(typed.model_dump()) | set(typed.extra_args or {})
                lost = set(args) - kept
                if lost:
                    raise ValueError(f"passes.{name}.training_args dropped by Olive: {sorted(lost)}")
                typed.output_dir = "unused"
                if values.get("eval_data_config"):  # as Olive's LoRA pass sets it when it has eval data
                    typed.eval_strategy = "steps"
                typed.create_training_args()
            assert checked is not None
    model_path = Path(str(config.input_model.config.get("model_path", "")))
    for data in config.data_configs:
        container = data.to_data_container()
        rows = container.load_dataset()
        if len(rows) == 0:
            raise ValueError(f"data config {data.name} loads no rows")
        params = dict(data.pre_process_data_config.params)
        validate_config({k: v for k, v in params.items() if k in TextGenParams.model_fields}, TextGenParams)
        if model_path.is_dir():
            processed = container.pre_process(rows)
            if len(processed) == 0:
                raise ValueError(f"data config {data.name} pre-processes to no examples")


def main(paths: list[str]) -> int:
    logging.disable(logging.WARNING)
    failed = 0
    for path in paths:
        try:
            check(path)
            print(f"ok {path}", flush=True)
        except Exception as exc:  # every way Olive refuses a config is a failure to report, with where it was
            failed += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"FAIL {path}: {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
