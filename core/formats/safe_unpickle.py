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
import reprlib
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from math import prod
from typing import Any, BinaryIO, Callable

import torch

from ckptboard.core.errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "LazyStorage",
    "LazyTensor",
    "Skipped",
    "BytesBuffer",
    "DangerousGlobal",
    "BadRecord",
    "SafeUnpickler",
    "StorageHook",
    "load_pickle",
    "dtype_name",
    "contiguous_stride",
    "short_repr",
    "DANGEROUS_MODULES",
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


@dataclass(frozen=True, eq=False)
class LazyStorage:
    """A storage the pickle refers to; ``reader`` is whatever object can later fetch its bytes.

    Frozen: once a reader has checked it against the file, nothing (a pickle's BUILD least of all) may change it.
    """

    key: str
    dtype: torch.dtype
    numel: int  # in elements of ``dtype``
    location: str = "cpu"
    element_offset: int = 0  # a legacy storage *view* starts this many elements into ``key``
    reader: Any = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True, eq=False)
class LazyTensor:
    """A tensor described by the pickle and not yet read: a strided view of a :class:`LazyStorage` (frozen)."""

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


class BytesBuffer(Skipped):
    """``io.BytesIO`` as pickled (TransformerEngine's ``_extra_state``: its FP8 scaling state, itself a
    ``torch.save`` pickle): only the length is kept, the bytes are never read as a pickle. NEWOBJ with no
    arguments, then BUILD with ``(bytes, position, dict or None)``; any other state is refused."""

    qualname = "_io.BytesIO"

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 3 and isinstance(state[0], (bytes, bytearray))
                and type(state[1]) is int and (state[2] is None or type(state[2]) is dict) and not self.args):
            raise BadRecord(f"io.BytesIO state {short_repr(state)} is not (bytes, position, dict)")
        self.nbytes = len(state[0])
        self.state = f"<{self.nbytes} bytes>"  # what an inspect report shows; the content is not kept


StorageHook = Callable[[torch.dtype, str, str, int, Any], LazyStorage]

# Module roots (or exact globals) whose objects a checkpoint has no reason to hold: naming one is an attack or
# a file only its author should load (with trust). Anything else unknown is merely skipped.
DANGEROUS_MODULES = frozenset(
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
        raise BadRecord(f"_codecs.encode with {type(text).__name__}, {short_repr(encoding)}")
    return codecs.latin_1_encode(text)[0]


def _bytearray(data: Any = b"") -> bytearray:
    # never bytearray(n): an int argument would allocate n bytes
    if not isinstance(data, (bytes, bytearray)):
        raise BadRecord(f"bytearray from {type(data).__name__}")
    return bytearray(data)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise BadRecord(f"tensor {what} {short_repr(value)} is not a tuple of non-negative ints")
    return tuple(value)


def _flags(metadata: Any) -> dict[str, bool]:
    if not isinstance(metadata, dict):
        return {}
    return {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, bool)}


def _lazy(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None, **extra: Any
) -> LazyTensor:
    if not isinstance(storage, LazyStorage):
        raise BadRecord(f"tensor rebuilt from {type(storage).__name__}, not a storage record")
    if type(offset) is not int or offset < 0:
        raise BadRecord(f"tensor storage offset {short_repr(offset)}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise BadRecord(f"tensor size {short_repr(shape)} and stride {short_repr(strides)} differ in length")
    dtype = dtype or storage.dtype
    if prod(shape):  # the farthest element must lie inside the storage
        extent = (offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * dtype.itemsize
        if extent > storage.nbytes:
            raise BadRecord(
                f"tensor of size {short_repr(shape)} at offset {offset} overruns its storage ({storage.nbytes} bytes)"
            )
    return LazyTensor(storage, offset + storage.element_offset, shape, strides, dtype, **extra)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _lazy(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _lazy(storage, storage_offset, size, stride, flags=_flags(metadata))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise BadRecord(f"tensor dtype {short_repr(dtype)}")
    return _lazy(storage, storage_offset, size, stride, dtype, flags=_flags(metadata))


def _rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params, requires_grad=False, backward_hooks=None):
    params = quantizer_params
    if not isinstance(params, tuple) or not params or not isinstance(params[0], torch.qscheme):
        raise BadRecord(f"quantizer parameters {short_repr(params)}")
    per_tensor = params[0] in (torch.per_tensor_affine, torch.per_tensor_symmetric)
    if per_tensor and not (len(params) == 3 and _real(params[1]) and type(params[2]) is int):
        raise BadRecord(f"per-tensor quantizer needs (scheme, float scale, int zero point), not {short_repr(params)}")
    if not per_tensor and not (len(params) == 4 and all(isinstance(p, LazyTensor) for p in params[1:3])
                               and type(params[3]) is int):  # fmt: skip
        raise BadRecord(
            f"per-channel quantizer needs (scheme, scales, zero points, int axis), not {short_repr(params)}"
        )
    return _lazy(storage, storage_offset, size, stride, quantizer=params)


def _real(value: Any) -> bool:
    return type(value) in (int, float)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return _rebuild_through(func, args)


def _rebuild_from_type(func, new_type, args, state):
    return _rebuild_through(func, args)


def _rebuild_through(func: Any, args: Any) -> Any:
    # a tensor subclass: rebuilt as the plain tensor underneath, by one of the tensor rebuilders only
    if func not in _REBUILDERS.values() or not isinstance(args, tuple) or len(args) > 8:
        raise BadRecord(f"tensor subclass rebuilt by {short_repr(func)} from {short_repr(args)}")
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
    "_io.BytesIO": BytesBuffer, "io.BytesIO": BytesBuffer,  # data only; every other io / _io global stays refused
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


def short_repr(value: Any) -> str:  # noqa: D401
    """A short repr of hostile content for an error message (bounded however large or deep ``value`` is)."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxset = 2, 8, 8, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40
_MAX_GLOBALS = 10_000  # distinct unknown globals; each costs a placeholder class
_MAX_KEY_DEPTH = 32  # nesting of a tuple used as a dict key or set element
# Distinct keys of one dict or set sharing one hash: each insert probes past all of them, so n such keys cost n**2.
# str and bytes hashes are salted per process; int, float and tuple hashes are not, and are easy to collide.
_MAX_SAME_HASH = 64
_MAX_LINE = 1 << 20  # a protocol-0 text argument (GLOBAL names, INT, LONG, UNICODE)
# Work a pickle may ask for, in units of one element copied or hashed: a multiple of its size, so that memo
# references cannot make a small file cost quadratic time (the same big tuple hashed or copied many times).
_WORK_PER_BYTE, _WORK_BASE = 16, 1_000_000
_BUILD_TARGETS = (OrderedDict, Counter)  # plain containers whose instances carry attributes (state_dict._metadata)
_HASHING_CALLS = (set, frozenset, Counter, OrderedDict)
_NEW_TYPES = frozenset({OrderedDict, Counter, set, frozenset, complex, torch.Size})


class _BoundedFile:
    """The pickle's bytes, refusing any read longer than what is left (a length field cannot allocate)."""

    def __init__(self, file: BinaryIO, size: int):
        self._read, self._readline, self.left = file.read, file.readline, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            raise BadRecord(f"a length field asks for {n} bytes; the pickle has {self.left} left")
        data = self._read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._readline(min(self.left, _MAX_LINE))
        self.left -= len(line)
        if not line.endswith(b"\n"):
            raise BadRecord("a text argument runs past the end of the pickle or over 1 MiB")
        return line


class SafeUnpickler(pickle._Unpickler):
    """Unpickle with an allow-list: tensors become :class:`LazyTensor`, other globals :class:`Skipped`.

    The pure-Python unpickler, with every opcode that could change an existing object (BUILD, SETITEM(S),
    APPEND(S), ADDITEMS) or make one (REDUCE, NEWOBJ, OBJ, INST) checked here: they apply only to placeholders
    and plain containers this pickle built, never to an allowed function, class or value shared with the process.
    Its memo is a dict (a memo index costs one entry, whatever its value), and all work is bounded by the size.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, storage_hook: StorageHook | None = None, size: int | None = None):
        size = _remaining(file) if size is None else size
        self._bounded = _BoundedFile(file, size)
        super().__init__(self._bounded)
        self._size = size
        self._storage_hook = storage_hook
        self._placeholders: dict[str, type[Skipped]] = {}
        self.skipped_globals: list[str] = []
        self._work, self._work_limit = 0, _WORK_PER_BYTE * size + _WORK_BASE
        self._hashes: dict[int, Counter] = {}  # id of a dict or set being filled -> its keys' hash counts

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
        if module.split(".")[0] in DANGEROUS_MODULES or qualname in _DANGEROUS_GLOBALS:
            raise DangerousGlobal(qualname[:200])
        return self._placeholder(qualname[:200])

    def _placeholder(self, qualname: str) -> type[Skipped]:
        if qualname not in self._placeholders:
            if len(self._placeholders) >= _MAX_GLOBALS:
                raise BadRecord(f"more than {_MAX_GLOBALS} distinct unknown globals")
            self._placeholders[qualname] = type("Skipped", (Skipped,), {"qualname": qualname})
            self.skipped_globals.append(qualname)
        return self._placeholders[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise BadRecord(f"persistent id {short_repr(pid)}")
        typename = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module" and len(pid) >= 2:  # legacy torch.save(model): the class, already a placeholder
            return pid[1]
        if typename != "storage" or len(pid) not in (5, 6) or self._storage_hook is None:
            raise BadRecord(f"persistent id {short_repr(pid[:5])}")
        storage_type, key, location, numel = pid[1:5]
        dtype = storage_type if isinstance(storage_type, torch.dtype) else getattr(storage_type, "dtype", None)
        if (not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not isinstance(location, str)
                or type(numel) is not int or numel < 0):  # fmt: skip
            raise BadRecord(f"storage record {short_repr(pid[:5])}")
        return self._storage_hook(dtype, key, location, numel, pid[5] if len(pid) == 6 else None)

    # --- budgets -------------------------------------------------------------------------------------------
    def _charge(self, units: int) -> None:
        self._work += units
        if self._work > self._work_limit:
            raise BadRecord(
                f"the pickle asks for more than {self._work_limit} element copies or hashes, far more than its "
                "size needs (memo references used as a multiplier)"
            )

    def _charge_key(self, key: Any, depth: int = 0) -> None:
        """Pay for hashing ``key``: a tuple costs its flattened size, refused past a nesting depth."""
        self._charge(1)
        if isinstance(key, tuple):
            if depth >= _MAX_KEY_DEPTH:
                raise BadRecord(f"a dict key or set element nested deeper than {_MAX_KEY_DEPTH} levels")
            for item in key:
                self._charge_key(item, depth + 1)
        elif isinstance(key, frozenset):
            self._charge(len(key))

    def _charge_keys(self, target: Any, keys: Any) -> None:
        """Pay for hashing ``keys`` into ``target`` (None: a new container); refuse a flood of equal hashes."""
        hashes = self._hashes.setdefault(id(target), Counter()) if target is not None else Counter()
        for key in keys:
            self._charge_key(key)
            if not isinstance(key, (str, bytes)):
                h = hash(key)
                hashes[h] += 1
                if hashes[h] > _MAX_SAME_HASH:
                    raise BadRecord(f"more than {_MAX_SAME_HASH} keys of one dict or set share a hash (hash flooding)")

    def _charge_call(self, func: Any, args: Any, kwargs: Any = None) -> tuple:
        if not isinstance(args, tuple) or not (kwargs is None or type(kwargs) is dict):
            raise BadRecord(f"call arguments {short_repr(args)} are not a tuple")
        self._charge(len(args) + len(kwargs or ()))
        for arg in args:
            if isinstance(arg, (str, bytes, bytearray, tuple, list, dict, set, frozenset)):
                self._charge(len(arg))  # most allowed calls copy or iterate their arguments
                if func in _HASHING_CALLS:
                    self._charge_keys(None, arg)
        return args

    # --- opcodes that make objects --------------------------------------------------------------------------
    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = func(*self._charge_call(func, args))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self._new_type(self.stack.pop())
        self.append(cls.__new__(cls, *self._charge_call(cls, args)))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self._new_type(self.stack.pop())
        self.append(cls.__new__(cls, *self._charge_call(cls, args, kwargs), **kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:
        self.append(klass(*self._charge_call(klass, tuple(args))))

    def _new_type(self, cls: Any) -> type:
        if not (isinstance(cls, type) and (issubclass(cls, Skipped) or cls in _NEW_TYPES)):
            raise BadRecord(f"NEWOBJ on {short_repr(cls)}, which is not a class the reader builds")
        return cls

    def load_dict(self) -> None:
        items = self.pop_mark()
        self._charge_keys(None, items[::2])
        self.append({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self._charge_keys(None, items)
        self.append(frozenset(items))

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))  # read() refuses a length past the end before anything is allocated

    def _memo_put(self, index: int) -> None:
        # a pickler numbers memo entries 0, 1, 2…: an index past the bytes read so far is forged
        read = self._size - self._bounded.left
        if index > read:
            raise BadRecord(f"memo index {index} is larger than the {read} bytes read so far")
        self.memo[index] = self.stack[-1]

    def load_put(self) -> None:
        self._memo_put(int(self.readline()[:-1]))

    def load_binput(self) -> None:
        self._memo_put(self.read(1)[0])

    def load_long_binput(self) -> None:
        self._memo_put(struct.unpack("<I", self.read(4))[0])

    def load_ext(self) -> None:
        raise BadRecord("EXT opcodes (copyreg extension registry) are not used by torch.save")

    # --- opcodes that change objects: only containers and placeholders this pickle built ---------------------
    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items([key, value])

    def load_setitems(self) -> None:
        self._set_items(self.pop_mark())

    def _set_items(self, items: list) -> None:
        target = self.stack[-1]
        if not (type(target) in (dict, OrderedDict, Counter) or isinstance(target, Skipped)):
            raise BadRecord(f"SETITEM on {short_repr(target)}, which is not a dict this pickle built")
        self._charge_keys(target, items[::2])
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_append(self) -> None:
        value = self.stack.pop()
        self._append_items([value])

    def load_appends(self) -> None:
        self._append_items(self.pop_mark())

    def _append_items(self, items: list) -> None:
        target = self.stack[-1]
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, Skipped):
            target.extend(items)
        else:
            raise BadRecord(f"APPEND on {short_repr(target)}, which is not a list this pickle built")

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise BadRecord(f"ADDITEMS on {short_repr(target)}, which is not a set this pickle built")
        self._charge_keys(target, items)
        target.update(items)

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, Skipped):
            target.__setstate__(state)
            return
        if type(target) not in _BUILD_TARGETS:
            raise BadRecord(f"BUILD on {short_repr(target)}: the pickle tries to change an object it did not create")
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        for part in (state, slots):
            if part is None:
                continue
            if type(part) is not dict or not all(type(k) is str and not k.startswith("__") for k in part):
                raise BadRecord(f"BUILD state {short_repr(part)} is not a dict of attribute names")
            self._charge(len(part))
            target.__dict__.update(part)

    for _op, _load in [
        (pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.DICT, load_dict), (pickle.FROZENSET, load_frozenset), (pickle.BYTEARRAY8, load_bytearray8),
        (pickle.PUT, load_put), (pickle.BINPUT, load_binput), (pickle.LONG_BINPUT, load_long_binput),
        (pickle.EXT1, load_ext), (pickle.EXT2, load_ext), (pickle.EXT4, load_ext),
        (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems), (pickle.APPEND, load_append),
        (pickle.APPENDS, load_appends), (pickle.ADDITEMS, load_additems), (pickle.BUILD, load_build),
    ]:  # fmt: skip
        dispatch[_op[0]] = _load
    del _op, _load


def _remaining(file: BinaryIO) -> int:
    here = file.tell()
    end = file.seek(0, 2)
    file.seek(here)
    return end - here


def load_pickle(
    file: BinaryIO, path: Any, storage_hook: StorageHook | None = None, size: int | None = None
) -> tuple[Any, list[str]]:
    """One pickle from ``file`` through :class:`SafeUnpickler`: ``(object, skipped globals)``; errors name ``path``.

    ``size`` bounds the bytes the pickle may use (default: the rest of ``file``).
    """
    try:
        unpickler = SafeUnpickler(file, storage_hook, size)
        return unpickler.load(), unpickler.skipped_globals
    except DangerousGlobal as e:
        raise UnsafeCheckpointError(
            path,
            f"the pickle calls {e.qualname}, which can run code; ckptboard never executes it. Re-run with --trust "
            "only if you made this file yourself",
        ) from e
    except BadRecord as e:
        raise CorruptCheckpointError(path, f"bad tensor record in the pickle: {e}") from e
    except CheckpointError:
        raise
    except RecursionError as e:
        raise CorruptCheckpointError(path, "the pickle nests objects too deeply to read") from e
    except Exception as e:  # a damaged pickle can fail in many ways; none is ours to show
        raise CorruptCheckpointError(path, f"damaged or truncated pickle ({type(e).__name__}: {_show_error(e)})") from e


def _show_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("…" if len(text) > 200 else "")
