"""slmnb's own Hugging Face `evaluate` modules, one file per metric, each loadable with `evaluate.load(<its path>)`.

They are not imported as a package: `slmnb.metrics.load` hands each file to `evaluate.load`, which copies it into its
modules cache and imports it from there, exactly as it does for any user's module, with no hub and no network.
"""
