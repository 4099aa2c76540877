"""Building a model from a ``--model SPEC``: ``path/to/file.py:factory``, ``package.module:factory`` or
``hf:CONFIG_DIR_OR_JSON`` (any transformers model from its ``config.json``, see :mod:`ckptboard.core.hf_model`).

The factory is a top-level name of that file or module (no dotted path after ``:``, so that a spec cannot reach
into the modules a file imports, as in ``model.py:torch.os.getpid``): an ``nn.Module`` subclass or a Python
function defined there (in the module or, for a package, one of its submodules), checked before anything is
called, and its result must be an ``nn.Module``. It runs under ``with torch.device(device):``
(``meta`` by default) so that building even a large model spends no memory. A file is imported under a fresh
module name with its folder first on ``sys.path`` (sibling imports work); both are undone afterwards, together
with any sibling modules it imported, so two specs in different folders never see each other's modules.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckptboard.core.errors import ModelSpecError, UsageError
from ckptboard.core.formats.safe_unpickle import DANGEROUS_MODULES as _SYSTEM_MODULES

__all__ = ["load_model", "resolve_model", "resolve_factory", "parse_spec"]

_counter = itertools.count()
HF_PREFIX = "hf:"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split SPEC into ``(target, attribute path)``; raise :class:`ModelSpecError` when it is malformed."""
    if isinstance(spec, str) and spec.startswith(HF_PREFIX):
        return _parse_hf_spec(spec)
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelSpecError(
            f"--model {spec!r}: expected 'path/to/file.py:factory' or 'package.module:factory' (no ':' found)"
        )
    target, _, attr = spec.rpartition(":")  # rpartition: a Windows drive letter keeps its colon
    if not target or not attr:
        raise ModelSpecError(f"--model {spec!r}: both the file/module before ':' and the factory after it are needed")
    if "." in attr and all(part.isidentifier() for part in attr.split(".")):
        raise ModelSpecError(
            f"--model {spec!r}: factory {attr!r} is a dotted path; name a top-level class or function of the file "
            "(e.g. 'Net' or 'make_model'), defining a small function there if the model is built elsewhere"
        )
    if not attr.isidentifier():
        raise ModelSpecError(f"--model {spec!r}: factory {attr!r} is not a Python name (e.g. 'Net' or 'make_model')")
    return target, attr


def resolve_factory(spec: str) -> Callable[[], Any]:
    """Import SPEC's file or module and return its factory (not called)."""
    with _resolved(spec) as factory:
        return factory


def load_model(spec: str, *, device: str | torch.device = "meta") -> nn.Module:
    """Build SPEC's model on ``device`` (``meta``: no memory spent) and return it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"model device {device!r}: not a torch device ({e}); use 'meta' or 'cpu'") from e
    if spec.startswith(HF_PREFIX):
        return _load_hf(spec, dev)
    with _resolved(spec) as factory:
        try:
            with dev:
                model = factory()
        except Exception as e:
            raise ModelSpecError(
                f"--model {spec}: the factory raised {type(e).__name__}: {_one_line(e)} "
                f"(built with no arguments on device '{dev}')" + _hf_hint(spec)
            ) from e
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"--model {spec}: the factory returned {type(model).__module__}.{type(model).__qualname__}, "
            "not a torch.nn.Module; point SPEC at a class or a zero-argument function that builds the model"
        )
    return model


def resolve_model(model: Any) -> Any:
    """The ``nn.Module`` for a ``--model SPEC`` string (built once per process, on meta), or ``model`` itself."""
    return _model_from_spec(model) if isinstance(model, str) else model


@functools.lru_cache(maxsize=4)
def _model_from_spec(spec: str) -> nn.Module:
    return load_model(spec, device="meta")  # every task of a process shares it; meta: no memory spent


@contextmanager
def _resolved(spec: str) -> Iterator[Callable[[], Any]]:
    """Yield SPEC's factory; a file's module and its siblings stay importable only inside the block."""
    target, attr = parse_spec(spec)
    if _is_file_target(target):
        with _file_module(spec, Path(target)) as module:
            yield _factory(spec, module, attr)
    else:
        yield _factory(spec, _import_module(spec, target), attr)


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_module(spec: str, name: str) -> Any:
    if not all(part.isidentifier() for part in name.split(".")):
        raise ModelSpecError(f"--model {spec}: {name!r} is neither a .py file nor a dotted module name")
    if name.split(".")[0] in _SYSTEM_MODULES:
        raise ModelSpecError(f"--model {spec}: {name!r} is a system module, not one that defines models")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise ModelSpecError(
                f"--model {spec}: module {name!r} is not importable (no module named {e.name!r}); "
                "install it or give a file path instead"
            ) from e
        raise ModelSpecError(f"--model {spec}: importing {name!r} failed: {type(e).__name__}: {_one_line(e)}") from e
    except Exception as e:
        raise ModelSpecError(f"--model {spec}: importing {name!r} failed: {type(e).__name__}: {_one_line(e)}") from e


@contextmanager
def _file_module(spec: str, path: Path) -> Iterator[Any]:
    path = path.expanduser()
    if not path.is_file():
        problem = "is a folder, not a .py file" if path.is_dir() else "does not exist"
        raise ModelSpecError(f"--model {spec}: file {path} {problem}")
    path = path.resolve()
    folder = str(path.parent)
    name = f"_ckptboard_model_{path.stem if path.stem.isidentifier() else 'file'}_{next(_counter)}"
    before = set(sys.modules)
    sys.path.insert(0, folder)
    try:
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ModelSpecError(f"--model {spec}: {path} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up here while the file runs
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ModelSpecError(f"--model {spec}: importing {path} failed: {type(e).__name__}: {_one_line(e)}") from e
        yield module
    finally:
        sys.modules.pop(name, None)
        _drop_sibling_modules(before, path.parent)
        try:
            sys.path.remove(folder)
        except ValueError:  # pragma: no cover - the factory removed it itself
            pass


def _drop_sibling_modules(before: set[str], folder: Path) -> None:
    """Forget modules imported from ``folder`` during the load, so another spec's siblings are not shadowed."""
    for mod_name in set(sys.modules) - before:
        file = getattr(sys.modules[mod_name], "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            del sys.modules[mod_name]


def _factory(spec: str, module: Any, attr: str) -> Callable[[], Any]:
    obj = getattr(module, attr, None)  # one name of the module itself (lazy modules resolve it in __getattr__)
    where = getattr(module, "__file__", None) or module.__name__
    if obj is None:
        raise ModelSpecError(f"--model {spec}: {where} has no attribute {attr!r}; check the name after ':'")
    if not callable(obj):
        raise ModelSpecError(
            f"--model {spec}: {attr!r} is a {type(obj).__name__}, not a class or function that builds the model"
        )
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise ModelSpecError(f"--model {spec}: class {attr!r} is not a torch.nn.Module subclass")
    owner = getattr(obj, "__module__", None) or ""
    if not (isinstance(obj, type) or inspect.isfunction(obj)) or not (
        owner == module.__name__ or owner.startswith(module.__name__ + ".")
    ):
        raise ModelSpecError(
            f"--model {spec}: {attr!r} is not a class or function defined in {where} (it comes from "
            f"{owner or type(obj).__name__!s}); define the factory in that file"
        )
    return obj


def _hf_hint(spec: str) -> str:
    """A transformers class needs its config: say how to give one."""
    return "; a transformers model is built from its config: --model hf:CONFIG_DIR_OR_JSON" if spec.startswith(
        "transformers"
    ) else ""


def _parse_hf_spec(spec: str) -> tuple[str, str]:
    """``hf:PATH`` -> ``("hf", PATH)``; the path must be a config.json or a folder holding one."""
    path = Path(spec[len(HF_PREFIX):]).expanduser()
    if not spec[len(HF_PREFIX):] or not (path.is_file() or (path / "config.json").is_file()):
        raise ModelSpecError(f"--model {spec}: expected hf:CONFIG_DIR_OR_JSON, a config.json or a folder holding one")
    return "hf", str(path)


def _load_hf(spec: str, device: torch.device) -> nn.Module:
    """``hf:CONFIG``: the transformers model the config describes, built on ``device``."""
    from ckptboard.core.hf_model import build_from_config

    _, path = _parse_hf_spec(spec)
    try:
        return build_from_config(path, device=device)[0]
    except ModelSpecError as e:
        raise ModelSpecError(f"--model {spec}: {e}") from e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")
