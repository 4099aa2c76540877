"""Hugging Face model folders: an index JSON naming the shards (or one weights file beside ``config.json``),
read as one checkpoint; ``trainer_state.json`` (Trainer's ``checkpoint-500/``) gives the step."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from ckptboard.core.containers import is_tensor
from ckptboard.core.errors import CorruptCheckpointError, NotACheckpointError
from ckptboard.core.formats.safetensors_file import flat_metadata

__all__ = ["INDEX_NAMES", "hf_weight_files", "read_hf_folder"]

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else (a list, deep nesting, bad bytes) is one error naming ``folder``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(folder, f"{path.name} is not readable JSON ({e})") from e
    except RecursionError as e:
        raise CorruptCheckpointError(folder, f"{path.name} nests too deeply to parse") from e
    if not isinstance(value, dict):
        raise CorruptCheckpointError(folder, f"{path.name} is not a JSON object")
    return value


def hf_weight_files(folder: Path) -> list[Path] | None:
    """The files a Hugging Face folder's weights live in (index first), or None if it is no such folder."""
    for name in INDEX_NAMES:
        index = folder / name
        if index.is_file():
            weight_map = _read_json(index, folder).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CorruptCheckpointError(folder, f"{name} has no weight_map")
            shards = list(OrderedDict.fromkeys(str(v) for v in weight_map.values()))
            if any(Path(s).name != s for s in shards):
                raise CorruptCheckpointError(folder, f"{name} names a shard outside the folder")
            return [index, *(folder / s for s in sorted(shards))]
    if (folder / "config.json").is_file():
        for name in _SINGLE_NAMES:
            if (folder / name).is_file():
                return [folder / name]
    return None


def read_hf_folder(folder: Path, open_shard: Callable[[Path, str], Any]) -> tuple[OrderedDict, list, dict]:
    """``(state_dict of lazy tensors, shard readers, metadata)``; ``open_shard(path, label)`` gives a reader."""
    files = hf_weight_files(folder)
    if files is None:
        raise NotACheckpointError(
            folder, f"a folder without {' or '.join(INDEX_NAMES)}: pass one checkpoint file, or give the folder of "
            "runs to `ckptboard summarize` or `ckptboard serve`",
        )
    metadata: dict[str, Any] = {}
    expected: list[str] = []
    if files[0].name in INDEX_NAMES:
        index = _read_json(files[0], folder)
        metadata.update(flat_metadata(index.get("metadata")))
        expected, files = list(index["weight_map"]), files[1:]
    trainer_state = folder / "trainer_state.json"
    if trainer_state.is_file():
        state = _read_json(trainer_state, folder)
        metadata.update(flat_metadata({k: state[k] for k in ("global_step", "epoch") if k in state}))
    combined: OrderedDict = OrderedDict()
    readers = []
    try:
        for shard in files:
            if not shard.is_file():
                raise CorruptCheckpointError(folder, f"shard {shard.name} is missing")
            reader = open_shard(shard, shard.name)
            readers.append(reader)
            tensors = reader.read_root()
            if not isinstance(tensors, dict):
                raise CorruptCheckpointError(shard, "a shard that is not a flat state_dict")
            combined.update((k, v) for k, v in tensors.items() if is_tensor(v))
        missing = [name for name in expected if name not in combined]
        if missing:
            raise CorruptCheckpointError(folder, f"{len(missing)} tensors of the index are in no shard, e.g. {missing[0]}")
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return combined, readers, metadata
