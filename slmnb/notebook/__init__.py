"""The notebook front end: the %%finetune and %opt magics, the live dashboard, the config form and run comparison.

This layer only displays and controls runs; training lives in slmnb.training and never imports widgets.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    from slmnb.notebook.magics import FinetuneMagics, OptMagics, allow_options_only

    ipython.register_magics(FinetuneMagics(ipython))
    ipython.register_magics(OptMagics(ipython))
    if allow_options_only not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(allow_options_only)
