"""GLAG: Gradual Balanced Loss and Adaptive Feature Generation for long-tailed classification.

``glag.run(glag.load_config(path, overrides))`` runs a recipe, ``glag.tune(cfg, cache_path, out)`` searches
its stage-two settings on validation rows; the command line is a thin caller of them.
"""

__version__ = "0.1.0"
__all__ = ["load_config", "run", "tune", "Config"]


def __getattr__(name):  # lazy: `import glag` stays light, torch loads when a run starts
    if name == "Config":
        from glag.config import Config

        return Config
    if name in ("load_config", "run"):
        from glag import pipeline

        return getattr(pipeline, name)
    if name == "tune":
        from glag import tuning

        return tuning.tune
    raise AttributeError(f"module 'glag' has no attribute {name!r}")
