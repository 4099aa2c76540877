"""Hugging Face models from a checkpoint's ``config.json``, built on the meta device: exact verdicts without --model.

Which config: ``config.json`` in a checkpoint folder (model folders, Trainer and accelerate checkpoints) or beside
a checkpoint file; for a PEFT adapter, the base model's ``config.json`` when ``base_model_name_or_path`` is a local
folder (named in a note; the adapter's own tensors keep the layout's verdict). Which class: ``architectures[0]``
when the installed ``transformers`` has it, else the auto class for ``model_type`` whose keys match the checkpoint
best. No network (``HF_HUB_OFFLINE``), and a config's own code (``auto_map``) runs only with ``trust``.
``transformers`` is optional (``pip install 'ckptboard[hf]'``); without it the heuristic decides and a note says so.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckptboard.core.errors import ModelSpecError

__all__ = [
    "CONFIG_NAME",
    "HF_EXTRA_HINT",
    "ConfigModel",
    "find_config",
    "read_config",
    "transformers_installed",
    "build_from_config",
    "model_for_checkpoint",
    "saved_key_renamer",
]

CONFIG_NAME = "config.json"
HF_EXTRA_HINT = (
    "install transformers (pip install 'ckptboard[hf]') for exact verdicts: it builds the model of config.json "
    "on the meta device"
)
_PEFT_BASE = "base_model_name_or_path"

# Auto classes tried, in order, when ``architectures`` names no class the installed transformers has.
_AUTO_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "MODEL_MAPPING_NAMES",
)


@dataclass
class ConfigModel:
    """The model a checkpoint's config describes (``None`` when there is no config or it cannot be built)."""

    config_path: Path | None = None
    model: nn.Module | None = None
    architecture: str | None = None  # the transformers class built
    config: dict[str, Any] = field(default_factory=dict)  # config.json as read
    notes: list[str] = field(default_factory=list)


def transformers_installed() -> bool:
    """Whether ``import transformers`` can work (without importing it: that costs about a second)."""
    try:
        return importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):  # sys.modules["transformers"] = None, or a broken install
        return False


def find_config(path: Path, metadata: dict[str, Any] | None = None) -> tuple[Path | None, bool]:
    """``(config.json path, is a PEFT base config)`` for a checkpoint file or folder; ``(None, False)`` if none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / CONFIG_NAME).is_file():
        return folder / CONFIG_NAME, False
    base = (metadata or {}).get(_PEFT_BASE)
    if isinstance(base, str) and base:
        candidate = Path(base).expanduser()
        if not candidate.is_absolute():
            candidate = folder / candidate if (folder / candidate).is_dir() else candidate
        if (candidate / CONFIG_NAME).is_file():
            return candidate / CONFIG_NAME, True
    return None, False


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict; ModelSpecError naming the file when it is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSpecError(f"{path}: not readable JSON ({e}); fix or remove it, or pass --model") from e
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: holds {type(data).__name__}, not a JSON object of a model config")
    return data


def build_from_config(
    path: str | Path, *, trust: bool = False, device: str | torch.device = "meta", names: Iterable[str] = ()
) -> tuple[nn.Module, str]:
    """Build the model a ``config.json`` (or the folder holding one) describes; return it and its class name.

    ``names``: the checkpoint's tensor names, to choose among auto classes when ``architectures`` does not name
    one. Raises :class:`ModelSpecError` (transformers missing, unknown model type, custom code without ``trust``).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such config file; give a config.json or the folder holding one")
    config = read_config(path)
    names = list(names)
    with _offline_quiet() as transformers:
        model_type = config.get("model_type")
        architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
        if isinstance(config.get("auto_map"), dict) and not any(hasattr(transformers, a) for a in architectures):
            return _build_custom(path, config, architectures, trust, torch.device(device))
        hf_config = _hf_config(transformers, path, config, model_type)
        named = [getattr(transformers, a) for a in architectures if hasattr(transformers, a)]
        if named:
            return _instantiate(path, named[0], hf_config, device), named[0].__name__
        classes = _auto_classes(transformers, model_type)
        if not classes:
            raise ModelSpecError(f"{path}: transformers has no model class for model_type {model_type!r}")
        return _best_of(path, classes, hf_config, device, names)


def model_for_checkpoint(ckpt: Any, *, trust: bool = False) -> ConfigModel:
    """The config model for an open checkpoint, built once per config file and process; notes say what happened."""
    config_path, peft_base = find_config(ckpt.path, getattr(ckpt, "metadata", None))
    if config_path is None:
        return ConfigModel()
    try:
        config = read_config(config_path)
    except ModelSpecError as e:
        return ConfigModel(config_path, notes=[f"config.json not used: {e}"])
    if "model_type" not in config and "architectures" not in config:
        return ConfigModel(config_path, config=config)  # a training config of its own, not a transformers one
    if peft_base:
        return ConfigModel(
            config_path, config=config,
            notes=[f"PEFT adapter: base model config {config_path} ({config.get('model_type', '?')}); the adapter's "
                   "tensors are classified by the adapter layout, not by the base model"],
        )
    if not transformers_installed():
        return ConfigModel(config_path, config=config, notes=[f"{config_path.name} found; {HF_EXTRA_HINT}"])
    names = tuple(sorted(i.name for i in ckpt.tensors))
    stat = config_path.stat()
    try:
        model, arch = _cached_build(str(config_path.resolve()), stat.st_mtime_ns, stat.st_size, trust, names)
    except ModelSpecError as e:
        return ConfigModel(config_path, config=config, notes=[f"config.json not used: {e}"])
    return ConfigModel(
        config_path, model, arch, config,
        notes=[f"classified by {arch} built from {config_path} on the meta device (trainable: the optimizer state "
               "where it lines up, else every parameter of a config-built model requires grad)"],
    )


@functools.lru_cache(maxsize=8)
def _cached_build(path: str, mtime_ns: int, size: int, trust: bool, names: tuple[str, ...]) -> tuple[nn.Module, str]:
    return build_from_config(path, trust=trust, names=names)


def saved_key_renamer(model: nn.Module) -> Callable[[str], str] | None:
    """For a transformers model whose module names differ from the names it saves (transformers 5 renames some
    architectures' modules and reverts on save): model key -> saved key. ``None`` for any other model."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange, WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4: modules are named as saved
        return None
    try:
        # What save_pretrained does for a model built from a config (revert_weight_conversion): every transform but
        # prefix changes, reversed, last first.
        transforms = [t for t in get_model_conversion_mapping(model, add_legacy=False) if not isinstance(t, PrefixChange)]
        reverse = [t.reverse_transform() for t in transforms[::-1]]
    except Exception:  # a private API of transformers: any change there means no renaming, not a crash
        return None
    renamings = [t for t in reverse if isinstance(t, WeightRenaming)]
    converters = [t for t in reverse if isinstance(t, WeightConverter)]
    if not renamings and not converters:
        return None

    def rename(key: str) -> str:
        try:
            return rename_source_key(key, renamings, converters, reverse=True)[0]
        except Exception:  # see above
            return key

    return rename


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _offline_quiet() -> Iterator[Any]:
    """transformers with the hub offline and its warnings muted while the block runs; yield the module.

    Imported before going offline: huggingface_hub reads HF_HUB_OFFLINE once, at import, and the caller's process
    must keep its own setting afterwards. Inside, the environment and huggingface_hub's constant both say offline.
    """
    try:
        import transformers
    except ImportError as e:
        raise ModelSpecError(f"building a model from config.json needs transformers: {HF_EXTRA_HINT}") from e
    constants = sys.modules.get("huggingface_hub.constants")
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update({k: "1" for k in saved_env})
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield transformers
    finally:
        transformers.logging.set_verbosity(verbosity)
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _hf_config(transformers: Any, path: Path, config: dict[str, Any], model_type: Any) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ModelSpecError(
            f"{path}: model_type {model_type!r} is unknown to transformers {transformers.__version__}; "
            "upgrade transformers or pass --model"
        )
    try:
        return CONFIG_MAPPING[model_type].from_dict(config)
    except Exception as e:  # a config the class rejects: whatever it raises
        raise ModelSpecError(f"{path}: {model_type} config rejected: {type(e).__name__}: {_one_line(e)}") from e


def _auto_classes(transformers: Any, model_type: Any) -> list[type]:
    from transformers.models.auto import modeling_auto

    out = []
    for mapping in _AUTO_MAPPINGS:
        name = getattr(modeling_auto, mapping, {}).get(model_type)
        if isinstance(name, str) and hasattr(transformers, name) and getattr(transformers, name) not in out:
            out.append(getattr(transformers, name))
    return out


def _instantiate(path: Path, cls: type, hf_config: Any, device: str | torch.device) -> nn.Module:
    try:
        with torch.device(device):
            model = cls(hf_config)
    except Exception as e:  # the class's own __init__: whatever it raises
        raise ModelSpecError(
            f"{path}: building {cls.__name__} raised {type(e).__name__}: {_one_line(e)}"
        ) from e
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{path}: {cls.__name__} did not build a torch.nn.Module")
    return model


def _best_of(
    path: Path, classes: list[type], hf_config: Any, device: str | torch.device, names: list[str]
) -> tuple[nn.Module, str]:
    """The first class, or among several the one whose state_dict keys end the most checkpoint names."""
    if len(classes) == 1 or not names:
        return _instantiate(path, classes[0], hf_config, device), classes[0].__name__
    best: tuple[int, nn.Module, str] | None = None
    for cls in classes:
        try:
            model = _instantiate(path, cls, hf_config, device)
        except ModelSpecError:
            continue
        keys = set(model.state_dict())
        key_suffixes = {".".join(k.split(".")[i:]) for k in keys for i in range(k.count(".") + 1)}
        score = sum(
            n in key_suffixes or any(".".join(n.split(".")[i:]) in keys for i in range(1, n.count(".") + 1))
            for n in names
        )
        if best is None or score > best[0]:
            best = (score, model, cls.__name__)
    if best is None:
        raise ModelSpecError(f"{path}: none of {', '.join(c.__name__ for c in classes)} could be built")
    return best[1], best[2]


def _build_custom(
    path: Path, config: dict[str, Any], architectures: list[str], trust: bool, device: torch.device
) -> tuple[nn.Module, str]:
    """A config whose model is its own code (``auto_map``): built from the folder's files only with ``trust``."""
    arch = architectures[0] if architectures else "?"
    if not trust:
        raise ModelSpecError(
            f"{path}: {arch} is custom code named by auto_map, not a transformers class; re-run with --trust to "
            "run the folder's code, or pass --model"
        )
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    auto_map = config["auto_map"]
    key = next((k for k in auto_map if k != "AutoConfig" and str(auto_map[k]).endswith("." + arch)), None)
    key = key or next((k for k in auto_map if k != "AutoConfig"), None)
    if key is None or not hasattr(modeling_auto, key):
        raise ModelSpecError(f"{path}: auto_map names no model class ({sorted(auto_map)})")
    try:
        hf_config = AutoConfig.from_pretrained(str(path.parent), trust_remote_code=True, local_files_only=True)
        with device:
            model = getattr(modeling_auto, key).from_config(hf_config, trust_remote_code=True)
    except Exception as e:  # the folder's own code: whatever it raises
        raise ModelSpecError(f"{path}: building {arch} from the folder's code raised {type(e).__name__}: "
                             f"{_one_line(e)}") from e
    return model, type(model).__name__


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")
