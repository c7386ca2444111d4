"""Recipe files for ``glag run --config``: TOML with sections whose keys are ``glag run``'s options.

A config sets the defaults of the command's options (click's default map), so flags given on the
command line override its keys. Unknown or misspelt keys are refused, naming the key and listing
the allowed ones.

Named stage-two variants (ablations) are ``[variants.<name>]`` tables of [generator] and [stage_two]
keys; a variant runs ``method`` (default ``glag``) with those keys changed, and ``[stage_two] method``
may list it by name, beside the plain methods.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from glag.errors import GlagError
from glag.paths import check_safe_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 << 20
SECTIONS = {
    "dataset": [
        "dataset",
        "imbalance",
        "profile",
        "n_max",
        "subset_seed",
        "val_per_class",
        "val_rows",
        "data_root",
        "full_split",
    ],
    "stage_one": [
        "loss",
        "a",
        "g",
        "tau",
        "backbone",
        "weights",
        "epochs",
        "batch_size",
        "lr",
        "warmup",
        "seed",
        "compile",
    ],
    "generator": ["lt", "k", "tail_below", "weighting", "mode", "max_dense_gb", "device"],
    "stage_two": [
        "method",
        "gen_epochs",
        "gen_batch_size",
        "gen_lr",
        "kd",
        "adaptive",
        "generate",
        "beta_init",
        "posthoc_la",
        "beta_delta",
        "alpha",
        "dispersion",
        "n_target",
    ],
}
VARIANT_KEYS = SECTIONS["generator"] + SECTIONS["stage_two"]
PARAM = {
    "method": "methods",
    "generate": "gen_features",
    "compile": "compile_model",
}  # config key -> the command's parameter name
KEY = {v: k for k, v in PARAM.items()}


def read_config(path: Path) -> dict:
    """A config file as ``{parameter name: value}``, checked for unknown sections and keys."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise GlagError(f"--config '{path}' is not a regular file; give a TOML recipe file")
        with open(path, "rb") as fh:  # bounded: a recipe is a few KB, /dev/zero or a huge file is refused
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise GlagError(
                f"--config '{path}' is over {MAX_CONFIG_BYTES // 1024} KiB; a recipe is a small TOML file"
            )
        raw = tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise GlagError(f"--config '{path}' cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GlagError(f"--config '{path}' is not valid TOML ({exc})") from None
    out = {}
    for section, body in raw.items():
        if section == "variants":
            out["variants"] = _variants(path, body)
            continue
        if section not in SECTIONS:
            raise GlagError(
                f"--config '{path}': unknown section [{section}]; allowed: "
                + ", ".join(f"[{s}]" for s in SECTIONS)
                + ", [variants.<name>]"
            )
        if not isinstance(body, dict):
            raise GlagError(f"--config '{path}': '{section}' must be a [section] of keys")
        for key, value in body.items():
            if key not in SECTIONS[section]:
                raise GlagError(
                    f"--config '{path}': unknown key '{key}' in [{section}]; allowed: "
                    + ", ".join(SECTIONS[section])
                )
            if key == "method":
                value = [value] if isinstance(value, str) else value
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise GlagError(f"--config '{path}': 'method' must be a name or a list of names")
            out[PARAM.get(key, key)] = value
    return out


def _variants(path: Path, body) -> dict[str, dict]:
    """``[variants.<name>]`` tables -> {name: {parameter name: value}}, each with its 'methods' (one
    method)."""
    from glag.classify.runner import METHODS

    if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
        raise GlagError(f"--config '{path}': variants must be [variants.<name>] tables of keys")
    out = {}
    for name, keys in body.items():
        check_safe_name(name, f"--config '{path}': variant name")  # it names run folders
        if name in METHODS:
            raise GlagError(f"--config '{path}': variant name '{name}' is a method's name; choose another")
        unknown = [k for k in keys if k not in VARIANT_KEYS]
        if unknown:
            raise GlagError(
                f"--config '{path}': unknown key '{unknown[0]}' in [variants.{name}]; allowed: "
                + ", ".join(VARIANT_KEYS)
            )
        method = keys.get("method", "glag")
        if method not in METHODS:
            raise GlagError(
                f"--config '{path}': [variants.{name}] method '{method}' is not a method; choose from: "
                + ", ".join(METHODS)
            )
        out[name] = {PARAM.get(k, k): v for k, v in keys.items()} | {"methods": (method,)}
    return out


def variant_table(overrides: dict) -> dict:
    """A variant's parameters as config keys (its one method as a name)."""
    return {KEY.get(k, k): (v[0] if k == "methods" else v) for k, v in overrides.items()}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


def effective_config(params: dict) -> dict:
    """``{section: {key: value}}`` of the values a run will use (unset optional values are left out)."""
    out = {}
    for section, keys in SECTIONS.items():
        body = {}
        for key in keys:
            v = params.get(PARAM.get(key, key))
            if v is None or v == "":
                continue
            body[key] = list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v)
        out[section] = body
    return out


def to_toml(cfg: dict) -> str:
    """TOML of ``{section: {key: value}}``; a value that is itself a table becomes ``[section.key]``."""
    lines = []
    for section, body in cfg.items():
        plain = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if plain or not body:  # an empty section still prints its header
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in plain.items()]
            lines.append("")
        for name, table in body.items():
            if isinstance(table, dict):
                lines.append(
                    f"[{section}.{name if re.fullmatch(r'[A-Za-z0-9_-]+', name) else json.dumps(name)}]"
                )
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
                lines.append("")
    return "\n".join(lines)
