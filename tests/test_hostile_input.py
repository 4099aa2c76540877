"""Hostile input at the reader: poisoning, budgets, files changing under a read, and the one-line error contract.

Each case is a file an attacker can hand over; each must end in a ``CheckpointError`` line (or read right), in
bounded memory and time, and must leave the process unchanged for the next file.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile

import pytest
import torch
from _fixtures_hostile import billion_laughs, long_binput, op_global, open_in_subprocess, pickled, torch_zip

from ckptboard.core.containers import split_contents
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError
from ckptboard.core.reader import open_checkpoint

_P2 = pickle.PROTO + b"\x02"


def _good_checkpoint(tmp_path):
    values = {
        "h": torch.tensor([1.5, -2.0, 3.25], dtype=torch.float16),
        "b": torch.tensor([0.5, 4.0], dtype=torch.bfloat16),
        "i": torch.tensor([7, -3, 0], dtype=torch.int32),
    }
    path = tmp_path / "good.pt"
    torch.save(values, path)
    return path, values


def _assert_reads_right(path, values):
    with open_checkpoint(path) as ckpt:
        for info in ckpt.tensors:
            assert torch.equal(ckpt.load(info), values[info.name]), info.name


# --- 1. integrity poisoning -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, state",
    [
        # torch.save omits the metadata argument, so a default {"neg": True} would negate every later tensor
        (("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (False, None, {"neg": True})})),
        (("collections", "Counter"), (None, {"__init__": None})),
        (("collections", "OrderedDict"), {"poisoned": 1}),
        (("torch", "float16"), (None, {"itemsize": 4})),
        (("torch", "per_tensor_affine"), {"poisoned": 1}),
    ],
    ids=["rebuild_tensor_v2.__defaults__", "Counter.__init__", "OrderedDict-class", "dtype", "qscheme"],
)
def test_build_on_a_shared_global_is_refused_and_later_reads_are_right(tmp_path, target, state):
    poison = torch_zip(tmp_path / "poison.pt", _P2 + op_global(*target) + pickled(state) + pickle.BUILD + pickle.STOP)
    good, values = _good_checkpoint(tmp_path)
    with pytest.raises(CorruptCheckpointError, match=r"poison\.pt: bad tensor record in the pickle: BUILD on "):
        open_checkpoint(poison)
    _assert_reads_right(good, values)


def test_build_and_setitem_on_a_storage_record_are_refused(tmp_path):
    """A validated record cannot be rewritten: BUILD or item assignment on it stops the read."""
    storage = (
        pickle.MARK + pickled("storage") + op_global("torch", "FloatStorage") + pickled("0") + pickled("cpu") + pickled(4) + pickle.TUPLE
        + pickle.BINPERSID
    )  # fmt: skip
    for tail, what in [(pickled({"numel": 1 << 40}) + pickle.BUILD, "BUILD"), (pickled("k") + pickled(1) + pickle.SETITEM, "SETITEM")]:
        path = torch_zip(tmp_path / f"{what}.pt", _P2 + storage + tail + pickle.STOP)
        with pytest.raises(CorruptCheckpointError, match=rf"{what} on "):
            open_checkpoint(path)


def test_setitems_and_appends_on_a_global_are_refused(tmp_path):
    for op, tail in [("SETITEM", pickled("k") + pickled(1) + pickle.SETITEM), ("APPEND", pickled(1) + pickle.APPEND)]:
        path = torch_zip(tmp_path / f"{op}.pt", _P2 + op_global("collections", "Counter") + tail + pickle.STOP)
        with pytest.raises(CorruptCheckpointError, match=rf"{op} on "):
            open_checkpoint(path)


def test_build_on_its_own_ordered_dict_still_works(tmp_path):
    """A state_dict's ``_metadata`` is set by BUILD on the OrderedDict the pickle built: that stays allowed."""
    net = torch.nn.Linear(2, 3)
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with open_checkpoint(path) as ckpt:
        assert [t.name for t in ckpt.tensors] == ["weight", "bias"]


# --- 2. budgets ---------------------------------------------------------------------------------------------


def test_memo_index_far_beyond_the_pickle_is_refused_without_allocating(tmp_path):
    path = torch_zip(tmp_path / "memo.pt", _P2 + pickle.EMPTY_DICT + long_binput(1 << 27) + pickle.STOP)
    line, _ = open_in_subprocess(path)  # today: a 2**28-slot memo list (2 GB) before anything is checked
    assert line.startswith("CorruptCheckpointError: ") and "memo index 134217728" in line, line


def test_billion_laughs_ends_quickly_in_one_error(tmp_path):
    path = torch_zip(tmp_path / "laughs.pt", billion_laughs(width=40, depth=9))
    line, _ = open_in_subprocess(path, timeout=30)  # 40**8 list visits without a budget: hours
    assert line.startswith("CorruptCheckpointError: ") and "same objects" in line, line


def test_walk_budget_counts_only_repeat_visits():
    """A big but plain structure (a loss history of 300k floats) is walked whole; only sharing is budgeted."""
    contents = split_contents({"losses": [float(i) for i in range(300_000)], "w": [torch.zeros(1)]})
    assert contents.metadata["losses"][-1] == "… 299968 more"  # 300000 - 32 shown


def test_deflated_data_pkl_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = _P2 + pickle.BINBYTES + (200 << 20).to_bytes(4, "little") + bytes(200 << 20) + pickle.STOP
    path = torch_zip(tmp_path / "bomb.pt", bomb, compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20  # 200 MiB of zeros deflate ~1000:1
    # 2 (PROTO) + 1 (BINBYTES) + 4 (length) + 209715200 (200 MiB) + 1 (STOP) = 209715208 bytes declared
    with pytest.raises(CorruptCheckpointError, match=r"bomb\.pt: archive member .*data\.pkl inflates to 209715208 bytes"):
        open_checkpoint(path)


def test_deflated_storage_record_bomb_is_refused_before_it_inflates(tmp_path):
    """A deflated 1 GiB-zero storage record (a few MB in the file) is refused when loaded, not inflated."""
    path = tmp_path / "record.pt"
    torch.save({"w": torch.zeros(4)}, path)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                data, kind = bytes(256 << 20), zipfile.ZIP_DEFLATED
            elif info.filename.endswith("/data.pkl"):  # 4 elements -> 2**26 elements (256 MiB of float32)
                data, kind = data.replace(pickle.BININT1 + b"\x04", pickle.BININT + (1 << 26).to_bytes(4, "little")), 0
            else:
                kind = 0
            dst.writestr(info.filename, data, compress_type=kind)
    with open_checkpoint(bomb) as ckpt:
        with pytest.raises(CorruptCheckpointError, match=r"storage record .*data/0 inflates to 268435456 bytes"):
            ckpt.load(ckpt.tensors[0])


def test_deep_json_in_a_safetensors_header_is_one_error(tmp_path):
    header = b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CorruptCheckpointError, match=r"deep\.safetensors: safetensors header nests too deeply"):
        open_checkpoint(path)


def test_deeply_nested_placeholder_content_is_counted_without_recursion_error(tmp_path):
    """A skipped global holding a list nested 100k deep (2 bytes a level): RecursionError today."""
    nested = pickle.MARK * 100_000 + pickle.EMPTY_LIST + pickle.LIST * 100_000
    payload = _P2 + op_global("argparse", "Namespace") + pickle.MARK + nested + pickle.TUPLE + pickle.REDUCE + pickle.STOP
    path = torch_zip(tmp_path / "nested.pt", payload)
    with open_checkpoint(path) as ckpt:
        assert ckpt.metadata["__skipped__"] == "argparse.Namespace"


def test_mutated_legacy_length_field_is_refused_in_bounded_memory(tmp_path):
    """A legacy file whose pickle claims a 3 GiB BINBYTES: refused before anything that size is allocated."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x80\x02}")  # the 4th pickle (the object) starts with PROTO 2 + EMPTY_DICT
    data[at + 2 : at + 3] = pickle.BINBYTES + (3 << 30).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    line, _ = open_in_subprocess(path)
    assert line.startswith("CorruptCheckpointError: ") and "asks for 3221225472 bytes" in line, line


# --- 4. the one-line contract ---------------------------------------------------------------------------------


def _patched_zip(tmp_path, edit):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    data = bytearray(path.read_bytes())
    edit(data)
    out = tmp_path / "edited.pt"
    out.write_bytes(bytes(data))
    return out


def _central(data: bytearray, field: int, value: bytes) -> None:
    """Overwrite ``field`` (byte offset inside each central directory entry) in every entry."""
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        data[at + field : at + field + len(value)] = value
        at += 4


def _bad_utf8_name(data: bytearray) -> None:
    _central(data, 8, b"\x00\x08")
    _central(data, 46, b"\xff")


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: _central(d, 10, b"\x63\x00"), "compression"),  # method 99 (AES): NotImplementedError today
        (lambda d: _central(d, 8, b"\x01\x00"), "encrypted"),  # flag bit 0: RuntimeError today
        (lambda d: _central(d, 6, b"\xff\x00"), "version"),  # needs zip version 25.5: NotImplementedError today
        (lambda d: _central(d, 10, b"\x08\x00"), "damaged"),  # claims deflate over stored bytes: zlib.error today
        (lambda d: _central(d, 10, b"\x0e\x00"), "damaged"),  # claims LZMA: LZMAError today
        (_bad_utf8_name, "damaged"),  # UTF-8 name flag over a name that is not UTF-8: UnicodeDecodeError today
    ],
    ids=["compression", "encrypted", "version", "zlib", "lzma", "utf8"],
)
def test_zip_library_failures_are_one_checkpoint_error(tmp_path, edit, problem):
    path = _patched_zip(tmp_path, edit)
    with pytest.raises(CheckpointError, match=rf"edited\.pt: .*{problem}"):
        with open_checkpoint(path) as ckpt:
            for info in ckpt.tensors:
                ckpt.load(info)


def test_local_header_past_the_end_is_one_error(tmp_path):
    """A central directory entry whose local header offset points past the end: struct.error today."""
    def edit(d):
        at = d.find(b"PK\x01\x02")
        while at >= 0:
            name_len = int.from_bytes(d[at + 28 : at + 30], "little")
            if d[at + 46 : at + 46 + name_len].endswith(b"/data/0"):
                d[at + 42 : at + 46] = (len(d) - 10).to_bytes(4, "little")
            at = d.find(b"PK\x01\x02", at + 4)

    path = _patched_zip(tmp_path, edit)
    with pytest.raises(CorruptCheckpointError, match=r"edited\.pt: .*data/0"):
        with open_checkpoint(path) as ckpt:
            ckpt.load(ckpt.tensors[0])


def test_quantized_tensor_with_a_string_scale_is_one_error(tmp_path):
    path = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.ones(4), 0.5, 3, torch.quint8)}, path)
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        pkl = zf.read(name)
    scale = pickle.BINFLOAT + struct.pack(">d", 0.5)
    assert scale in pkl
    bad = torch_zip(tmp_path / "bad.pt", pkl.replace(scale, pickle.SHORT_BINUNICODE + b"\x03abc"),
                    state={"q": torch.quantize_per_tensor(torch.ones(4), 0.5, 3, torch.quint8)})  # fmt: skip
    with pytest.raises(CorruptCheckpointError, match=r"bad\.pt: bad tensor record in the pickle: per-tensor quantizer"):
        open_checkpoint(bad)


def test_legacy_storage_key_list_with_unhashable_keys_is_one_error(tmp_path):
    """The legacy format's last pickle (the storage keys) holding a list: TypeError (unhashable) today."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    f = io.BytesIO(data)
    for _ in range(4):  # magic, protocol, sys_info, the object; the fifth pickle lists the storage keys
        for _op in pickletools.genops(f):  # walks one pickle's opcodes to its STOP without running them
            pass
    start = f.tell()
    keys = pickle.Unpickler(f).load()
    assert len(keys) == 1  # the storage's key (its address when saved)
    path.write_bytes(data[:start] + pickle.dumps([keys], protocol=2) + data[f.tell() :])
    with pytest.raises(CorruptCheckpointError, match=r"legacy\.pt: .*storage key list"):
        open_checkpoint(path)


# --- 3. a file changing under the read ----------------------------------------------------------------------------

_TRUNCATE_RUNNER = r"""
import sys
import torch
from ckptboard.core.errors import CkptboardError
from ckptboard.core.reader import open_checkpoint
try:
    with open_checkpoint(sys.argv[1]) as ckpt:
        for n, info in enumerate(ckpt.tensors):
            total = float(ckpt.load(info).sum())  # touches every byte
            if n == 0:
                print("first", total, flush=True)
                sys.stdin.readline()  # the parent truncates the file now: `: > last.ckpt`
    print("OK")
except CkptboardError as e:
    print(f"{type(e).__name__}: {e}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_file_truncated_while_read_is_reported_and_the_process_lives(tmp_path, kind):
    """256 MB written by torch, truncated in place after the first tensor is read: SIGBUS (exit -7) with a mapping."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    state = {f"t{i}": torch.full((8 << 20,), float(i)) for i in range(8)}  # 8 x 32 MiB of float32
    path = tmp_path / f"last.{kind}"
    if kind == "safetensors":
        save_file(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
    del state
    child = subprocess.Popen([sys.executable, "-c", _TRUNCATE_RUNNER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = child.stdout.readline()
    assert first.startswith("first 0.0"), first + child.stderr.read()
    with open(path, "r+b") as f:
        f.truncate(0)
    out, err = child.communicate("go\n", timeout=120)
    assert child.returncode == 0, f"exit {child.returncode}: {err[-500:]}"
    assert out.strip().startswith(f"ChangedWhileReadError: {path}: changed while read"), out + err[-500:]


@pytest.mark.parametrize(
    "text, problem",
    [("[" * 100_000 + "]" * 100_000, "nests too deeply to parse"), ('["weight_map"]', "is not a JSON object")],
    ids=["deep", "list"],
)
def test_hugging_face_index_that_is_no_json_object_is_one_error(tmp_path, text, problem):
    """RecursionError and AttributeError (``list.get``) today."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CorruptCheckpointError, match=rf"hf: model\.safetensors\.index\.json {problem}"):
        open_checkpoint(folder)


def test_dict_keys_flooding_one_hash_are_refused(tmp_path):
    """100k int keys k * (2**61 - 1) all hash to 0 (1.3 MB of opcodes): 5e9 probes, minutes of CPU, today."""
    modulus = (1 << 61) - 1  # CPython's int hash is the value modulo this prime
    keys = b"".join(pickled(k * modulus) + pickle.NONE for k in range(1, 100_001))
    path = torch_zip(tmp_path / "flood.pt", _P2 + pickle.EMPTY_DICT + pickle.MARK + keys + pickle.SETITEMS + pickle.STOP)
    line, _ = open_in_subprocess(path, timeout=60)
    assert line.startswith("CorruptCheckpointError: ") and "share a hash (hash flooding)" in line, line


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_loaded_tensors_held_together_keep_their_values(tmp_path, kind):
    """Reads reuse a spare buffer only once no tensor refers to it: tensors a caller keeps are never overwritten."""
    from safetensors.torch import save_file

    state = {"a": torch.arange(10.0), "b": torch.arange(5.0) * 2, "c": torch.ones(3, dtype=torch.bfloat16)}
    path = tmp_path / f"x.{kind}"
    if kind == "safetensors":
        save_file(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
    with open_checkpoint(path) as ckpt:
        held = [ckpt.load(info) for info in ckpt.tensors]
        again = {info.name: ckpt.load(info).clone() for info in ckpt.tensors}  # each dropped: the buffer is reused
        held[0].add_(100)  # a caller's write reaches neither the file nor the next load
        for info, tensor in zip(ckpt.tensors, held):
            expected = state[info.name] + (100 if tensor is held[0] else 0)
            assert torch.equal(tensor, expected) and torch.equal(again[info.name], state[info.name]), info.name
        assert torch.equal(ckpt.load(ckpt.tensors[0]), state[ckpt.tensors[0].name])


def test_changed_while_read_is_retried_like_a_file_still_being_written():
    """The summarizer records IncompleteCheckpointError as incomplete (retried next run), not as a cached failure."""
    from ckptboard.core.errors import ChangedWhileReadError, IncompleteCheckpointError

    assert issubclass(ChangedWhileReadError, IncompleteCheckpointError)
