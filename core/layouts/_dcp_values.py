"""Small non-tensor values of a DCP folder (an optimizer's ``lr``, ``betas``, its group's ``params``), read safely.

Each such value is a ``BytesStorageMetadata`` item: its own ``torch.save`` zip inside a ``.distcp`` file
(``DefaultSavePlanner`` writes ``torch.save(obj, BytesIO)``). Its pickle goes through the restricted unpickler; a
value holding a tensor, or larger than :data:`MAX_VALUE_BYTES`, is not read. Equal bytes are parsed once: every
parameter of torchtitan's flattened optimizer repeats its group's ``lr``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from ckptboard.core.errors import CheckpointError, CorruptCheckpointError
from ckptboard.core.formats.dcp_metadata import DcpItem
from ckptboard.core.formats.safe_unpickle import LazyTensor, load_pickle
from ckptboard.core.formats.sniff import zip_kind

__all__ = ["ValueReader", "MAX_VALUE_BYTES"]

MAX_VALUE_BYTES = 1 << 20  # a hyperparameter's zip is ~1 KiB; a larger value is data, not a setting


class ValueReader:
    """Reads ``BytesStorageMetadata`` items of one DCP folder; files stay open until :meth:`close`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._files: dict[str, Any] = {}
        self._parsed: dict[bytes, Any] = {}

    def read(self, item: DcpItem) -> Any:
        """The value ``item`` holds (plain Python data); CheckpointError when it cannot or may not be read."""
        if item.is_tensor or len(item.chunks) != 1:
            raise CorruptCheckpointError(self.folder, f"{item.fqn} is no pickled value")
        chunk = item.chunks[0]
        if chunk.length > MAX_VALUE_BYTES:
            raise CorruptCheckpointError(self.folder, f"{item.fqn}: a value of {chunk.length} bytes is not read")
        f = self._file(chunk.file)
        f.seek(chunk.offset)
        raw = f.read(chunk.length)
        if len(raw) != chunk.length:
            raise CorruptCheckpointError(self.folder, f"{chunk.file} is truncated inside {item.fqn}")
        if raw not in self._parsed:
            self._parsed[raw] = self._parse(raw, item, chunk.file)
        return self._parsed[raw]

    def _parse(self, raw: bytes, item: DcpItem, file: str) -> Any:
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                kind = zip_kind(zf.namelist())
                if kind is None or kind[0] != "torch":
                    raise CorruptCheckpointError(self.folder, f"{item.fqn}: {file} holds no torch.save archive")
                pickled = zf.read(f"{kind[1]}/data.pkl")
        except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
            raise CorruptCheckpointError(self.folder, f"{item.fqn}: damaged value in {file} ({e})") from e
        value, _ = load_pickle(io.BytesIO(pickled), self.folder / file)
        if _holds_tensor(value):
            raise CorruptCheckpointError(self.folder, f"{item.fqn}: a value holding a tensor is not read")
        return value

    def _file(self, name: str) -> Any:
        if name not in self._files:
            try:
                self._files[name] = open(self.folder / name, "rb")  # noqa: SIM115 (closed by close())
            except OSError as e:
                raise CheckpointError(self.folder, f"{name} cannot be read ({e.strerror or e})") from e
        return self._files[name]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> ValueReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    if isinstance(value, LazyTensor):
        return True
    if depth < 4 and isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    if depth < 4 and isinstance(value, dict):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    return False
