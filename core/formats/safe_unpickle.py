"""A pickle reader that runs no code: tensors become lazy references, unknown globals become inert placeholders.

``torch.save`` pickles describe tensors as calls to a few ``torch._utils._rebuild_*`` functions over storages
that ``persistent_load`` resolves. :class:`SafeUnpickler` answers those calls with :class:`LazyTensor` records
(shape, stride, dtype, storage key; no bytes read), allows a short list of harmless builtins and torch value
types, and turns every other global into a :class:`Skipped` placeholder class: its module is never imported and
nothing of it is called; it only records what the pickle gave it. Globals that exist to run code (``os.system``,
``builtins.exec``, ``subprocess``…) stop the read with :class:`DangerousGlobal`.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import pickle
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from math import prod
from typing import Any, BinaryIO, Callable

import torch

from ckptboard.core.errors import CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "LazyStorage",
    "LazyTensor",
    "Skipped",
    "DangerousGlobal",
    "BadRecord",
    "SafeUnpickler",
    "StorageHook",
    "load_pickle",
    "dtype_name",
    "contiguous_stride",
]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides of ``shape``, in elements."""
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


class DangerousGlobal(pickle.UnpicklingError):
    """The pickle names a global whose only use in a pickle is to run code."""

    def __init__(self, qualname: str):
        self.qualname = qualname
        super().__init__(qualname)


class BadRecord(pickle.UnpicklingError):
    """A tensor or storage record of the pickle does not make sense."""


@dataclass(eq=False)
class LazyStorage:
    """A storage the pickle refers to; ``reader`` is whatever object can later fetch its bytes."""

    key: str
    dtype: torch.dtype
    numel: int  # in elements of ``dtype``
    location: str = "cpu"
    element_offset: int = 0  # a legacy storage *view* starts this many elements into ``key``
    reader: Any = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(eq=False)
class LazyTensor:
    """A tensor described by the pickle and not yet read: a strided view of a :class:`LazyStorage`."""

    storage: LazyStorage
    offset: int  # in elements of ``dtype``
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    quantizer: tuple | None = None  # (qscheme, scale, zero_point) or (qscheme, scales, zero_points, axis)
    flags: dict[str, bool] = field(default_factory=dict)  # torch's conj/neg bits

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __setstate__(self, state: Any) -> None:
        """Ignore state a pickle tries to set on the record (torch never does)."""


class Skipped:
    """Base of the inert placeholders that stand for globals the reader does not build.

    A placeholder class absorbs constructor arguments, ``__setstate__`` state, items and appends, and does nothing
    else; ``qualname`` names the global it replaced.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Skipped:
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items, self.appended = args, kwargs, None, {}, []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.appended.append(value)

    def extend(self, values: Any) -> None:
        self.appended.extend(values)

    def __repr__(self) -> str:
        return f"<skipped {self.qualname}>"


StorageHook = Callable[[torch.dtype, str, str, int, Any], LazyStorage]

# Module roots (or exact globals) whose objects a checkpoint has no reason to hold: naming one is an attack or
# a file only its author should load (with trust). Anything else unknown is merely skipped.
_DANGEROUS_ROOTS = frozenset(
    "os posix nt subprocess _posixsubprocess sys builtins shutil socket importlib runpy pty code codeop pickle "
    "_pickle marshal ctypes types webbrowser multiprocessing signal io _io pathlib tempfile operator _operator "
    "functools _functools inspect pdb bdb timeit platform asyncio http urllib ftplib smtplib telnetlib shelve "
    "dbm glob fileinput zipfile tarfile posixpath ntpath copyreg gc threading _thread sysconfig site ensurepip "
    "venv distutils setuptools pip pkgutil zipimport imp ast dis cProfile profile trace linecache traceback "
    "logging sqlite3 ssl select selectors mmap resource".split()
)
_DANGEROUS_GLOBALS = frozenset({"torch.load", "torch.serialization.load", "torch.jit.load", "torch.hub.load"})

_STORAGE_DTYPES = {
    "Storage": torch.float32, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64,
    "IntStorage": torch.int32, "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "QInt8Storage": torch.qint8, "QInt32Storage": torch.qint32, "QUInt8Storage": torch.quint8,
    "QUInt4x2Storage": torch.quint4x2, "QUInt2x4Storage": torch.quint2x4, "UntypedStorage": torch.uint8,
}  # fmt: skip
_QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
             "per_channel_affine_float_qparams")  # fmt: skip
_TENSOR_TYPES = frozenset({"torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter"})
_TENSOR_TYPE = object()


class _StorageType:
    """What a storage class global unpickles to: only its dtype matters."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # protocol 2 writes bytes as _codecs.encode(str, "latin1"); no other codec (codecs can import modules)
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise BadRecord(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return codecs.latin_1_encode(text)[0]


def _bytearray(data: Any = b"") -> bytearray:
    # never bytearray(n): an int argument would allocate n bytes
    if not isinstance(data, (bytes, bytearray)):
        raise BadRecord(f"bytearray from {type(data).__name__}")
    return bytearray(data)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise BadRecord(f"tensor {what} {value!r} is not a tuple of non-negative ints")
    return tuple(value)


def _lazy(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> LazyTensor:
    if not isinstance(storage, LazyStorage):
        raise BadRecord(f"tensor rebuilt from {type(storage).__name__}, not a storage record")
    if type(offset) is not int or offset < 0:
        raise BadRecord(f"tensor storage offset {offset!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise BadRecord(f"tensor size {shape} and stride {strides} differ in length")
    dtype = dtype or storage.dtype
    if prod(shape):  # the farthest element must lie inside the storage
        extent = (offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * dtype.itemsize
        if extent > storage.nbytes:
            raise BadRecord(f"tensor of size {shape} at offset {offset} overruns its storage ({storage.nbytes} bytes)")
    return LazyTensor(storage, offset + storage.element_offset, shape, strides, dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _lazy(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    tensor = _lazy(storage, storage_offset, size, stride)
    if isinstance(metadata, dict):
        tensor.flags = {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, bool)}
    return tensor


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise BadRecord(f"tensor dtype {dtype!r}")
    tensor = _lazy(storage, storage_offset, size, stride, dtype)
    if isinstance(metadata, dict):
        tensor.flags = {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, bool)}
    return tensor


def _rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params, requires_grad=False, backward_hooks=None):
    tensor = _lazy(storage, storage_offset, size, stride)
    if not isinstance(quantizer_params, tuple) or not quantizer_params or not isinstance(quantizer_params[0], torch.qscheme):
        raise BadRecord(f"quantizer parameters {quantizer_params!r}")
    tensor.quantizer = quantizer_params
    return tensor


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


_REBUILDERS: dict[str, Callable] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._tensor._rebuild_from_type": _rebuild_from_type,
}

_ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "collections.Counter": Counter,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.slice": slice, "builtins.complex": complex,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _latin1_encode,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    **{f"torch.{name}": getattr(torch, name) for name in _QSCHEMES},
    **_REBUILDERS,
}  # fmt: skip


def _torch_value(name: str) -> Any:
    """A torch dtype (``torch.float32``) or storage class (``torch.FloatStorage``, ``torch.cuda.HalfStorage``)."""
    last = name.rpartition(".")[2]
    if last in _STORAGE_DTYPES and name.startswith("torch."):
        return _StorageType(_STORAGE_DTYPES[last])
    value = getattr(torch, last, None) if name.count(".") == 1 else None
    return value if isinstance(value, torch.dtype) else None


class SafeUnpickler(pickle.Unpickler):
    """Unpickle with an allow-list: tensors become :class:`LazyTensor`, other globals :class:`Skipped`."""

    def __init__(self, file: BinaryIO, storage_hook: StorageHook | None = None):
        super().__init__(file)
        self._storage_hook = storage_hook
        self._placeholders: dict[str, type[Skipped]] = {}
        self.skipped_globals: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in _ALLOWED:
            return _ALLOWED[qualname]
        if qualname in _TENSOR_TYPES:
            return _TENSOR_TYPE  # only ever the type tag of _rebuild_from_type_v2
        if module.startswith("torch") and (value := _torch_value(qualname)) is not None:
            return value
        if module.split(".")[0] in _DANGEROUS_ROOTS or qualname in _DANGEROUS_GLOBALS:
            raise DangerousGlobal(qualname)
        return self._placeholder(qualname)

    def _placeholder(self, qualname: str) -> type[Skipped]:
        if qualname not in self._placeholders:
            self._placeholders[qualname] = type("Skipped", (Skipped,), {"qualname": qualname})
            self.skipped_globals.append(qualname)
        return self._placeholders[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise BadRecord(f"persistent id {pid!r}")
        typename = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if typename == "module" and len(pid) >= 2:  # legacy torch.save(model): the class, already a placeholder
            return pid[1]
        if typename != "storage" or len(pid) not in (5, 6) or self._storage_hook is None:
            raise BadRecord(f"persistent id {pid[:5]!r}")
        storage_type, key, location, numel = pid[1:5]
        dtype = storage_type if isinstance(storage_type, torch.dtype) else getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise BadRecord(f"storage record {pid[:5]!r}")
        return self._storage_hook(dtype, key, str(location), numel, pid[5] if len(pid) == 6 else None)


def load_pickle(file: BinaryIO, path: Any, storage_hook: StorageHook | None = None) -> tuple[Any, list[str]]:
    """One pickle from ``file`` through :class:`SafeUnpickler`: ``(object, skipped globals)``; errors name ``path``."""
    unpickler = SafeUnpickler(file, storage_hook)
    try:
        return unpickler.load(), unpickler.skipped_globals
    except DangerousGlobal as e:
        raise UnsafeCheckpointError(
            path,
            f"the pickle calls {e.qualname}, which can run code; ckptboard never executes it. Re-run with --trust "
            "only if you made this file yourself",
        ) from e
    except BadRecord as e:
        raise CorruptCheckpointError(path, f"bad tensor record in the pickle: {e}") from e
    except Exception as e:  # a damaged pickle can fail in many ways; none is ours to show
        raise CorruptCheckpointError(path, f"damaged or truncated pickle ({type(e).__name__}: {e})") from e
