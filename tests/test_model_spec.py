"""``load_model`` / ``resolve_factory``: building a model from ``file.py:factory`` or ``package.module:factory``."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from ckptboard.core.errors import ModelSpecError, UsageError
from ckptboard.core.model_spec import load_model, parse_spec, resolve_factory


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def model_file(tmp_path):
    _write(tmp_path / "blocks.py", """
        from torch import nn
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(1000, 1000)
                self.bn = nn.BatchNorm1d(1000)
    """)
    return _write(tmp_path / "net.py", """
        from torch import nn
        from blocks import Block  # a sibling import: the file's folder must be on sys.path

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = Block()
                self.head = nn.Linear(1000, 3)

        def make():
            return Net()

        def broken():
            raise ValueError("needs a config")

        def not_a_module():
            return {"weights": 1}

        CONSTANT = 3
    """)


def test_file_spec_builds_on_meta_with_sibling_import(model_file):
    model = load_model(f"{model_file}:Net")
    assert isinstance(model, nn.Module)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    # lin 1000*1000 + 1000 = 1_001_000; bn 1000 + 1000 = 2_000; head 1000*3 + 3 = 3_003 -> 1_006_003
    assert sum(p.numel() for p in model.parameters()) == 1_006_003


def test_function_factory_and_cpu_device(model_file):
    model = load_model(f"{model_file}:make", device="cpu")
    assert model.head.weight.device == torch.device("cpu")


def test_file_import_leaves_sys_modules_and_path_clean(model_file):
    before_modules, before_path = set(sys.modules), list(sys.path)
    load_model(f"{model_file}:Net")
    assert set(sys.modules) - before_modules == set()
    assert sys.path == before_path


def test_two_files_with_same_sibling_name_do_not_shadow_each_other(tmp_path):
    for sub, width in (("a", 2), ("b", 5)):
        (tmp_path / sub).mkdir()
        _write(tmp_path / sub / "layers.py", f"WIDTH = {width}\n")
        _write(tmp_path / sub / "m.py", """
            from torch import nn
            import layers
            def make():
                return nn.Linear(layers.WIDTH, 1)
        """)
    assert load_model(f"{tmp_path / 'a' / 'm.py'}:make").in_features == 2
    assert load_model(f"{tmp_path / 'b' / 'm.py'}:make").in_features == 5


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_package_module_spec():
    model = load_model("torch.nn:Transformer")
    assert isinstance(model, nn.Transformer)
    assert next(model.parameters()).is_meta


def test_dotted_attribute_after_colon_is_refused(tmp_path):
    path = _write(tmp_path / "zoo.py", """
        from torch import nn
        class Zoo:
            @staticmethod
            def tiny():
                return nn.Linear(2, 2)
    """)
    with pytest.raises(ModelSpecError, match=r"factory 'Zoo\.tiny' is a dotted path; name a top-level class"):
        load_model(f"{path}:Zoo.tiny")


@pytest.fixture
def marker_files(tmp_path):
    """A model file importing a helper that leaves a marker when called, and a non-Module class that does too."""
    marker = tmp_path / "called"
    _write(tmp_path / "helpers.py", f"""
        from pathlib import Path
        def make_marker():
            Path({str(marker)!r}).write_text("called")
    """)
    path = _write(tmp_path / "model.py", f"""
        import os
        import torch
        import helpers
        from helpers import make_marker
        from pathlib import Path

        class Marker:
            def __init__(self):
                Path({str(marker)!r}).write_text("called")
    """)
    return path, marker


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ("torch.os.getpid", r"is a dotted path"),
        ("helpers.make_marker", r"is a dotted path"),
        ("os", r"'os' is a module, not a class or function"),
        ("make_marker", r"'make_marker' is not a class or function defined in .*model\.py \(it comes from helpers\)"),
        ("Marker", r"class 'Marker' is not a torch\.nn\.Module subclass"),
    ],
)
def test_factory_must_be_defined_in_the_file_and_is_refused_before_any_call(marker_files, attr, match):
    path, marker = marker_files
    with pytest.raises(ModelSpecError, match=match):
        load_model(f"{path}:{attr}")
    assert not marker.exists()


@pytest.mark.parametrize("spec", ["os:getpid", "posix:abort", "subprocess:run", "pdb:set_trace"])
def test_system_module_specs_are_refused(spec):
    with pytest.raises(ModelSpecError, match=r"is a system module, not one that defines models"):
        load_model(spec)


def test_resolve_factory_returns_the_callable_without_calling_it(model_file):
    factory = resolve_factory(f"{model_file}:broken")
    with pytest.raises(ValueError, match="needs a config"):
        factory()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon_here", r"no ':' found"),
        ("torch.nn:", r"both the file/module"),
        ("torch.nn:not a name", r"is not a Python name"),
        ("definitely_not_a_module_xyz:Net", r"module 'definitely_not_a_module_xyz' is not importable"),
        ("torch.nn:NoSuchLayer", r"has no attribute 'NoSuchLayer'"),
        ("torch.nn.functional:F", r"has no attribute 'F'"),
    ],
)
def test_bad_specs_name_the_problem(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        load_model(spec)


def test_missing_file(tmp_path):
    with pytest.raises(ModelSpecError, match=r"missing\.py does not exist"):
        load_model(f"{tmp_path / 'missing.py'}:Net")


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    with pytest.raises(ModelSpecError, match="is a folder, not a .py file"):
        load_model(f"{tmp_path / 'pkg'}/:Net")


def test_file_that_fails_to_import(tmp_path):
    path = _write(tmp_path / "bad.py", "import not_installed_dependency_xyz\n")
    with pytest.raises(ModelSpecError, match=r"importing .*bad\.py failed: ModuleNotFoundError"):
        load_model(f"{path}:Net")


def test_factory_raising_names_type_and_message(model_file):
    with pytest.raises(ModelSpecError, match=r"factory raised ValueError: needs a config .*device 'meta'"):
        load_model(f"{model_file}:broken")


def test_factory_returning_non_module(model_file):
    with pytest.raises(ModelSpecError, match=r"returned builtins\.dict, not a torch\.nn\.Module"):
        load_model(f"{model_file}:not_a_module")


def test_attribute_that_is_not_callable(model_file):
    with pytest.raises(ModelSpecError, match=r"'CONSTANT' is a int, not a class or function"):
        load_model(f"{model_file}:CONSTANT")


def test_bad_device_is_a_usage_error(model_file):
    with pytest.raises(UsageError, match=r"model device 'nonsense': not a torch device"):
        load_model(f"{model_file}:Net", device="nonsense")


def test_parse_spec_keeps_windows_drive_colon():
    assert parse_spec(r"C:\models\net.py:Net") == (r"C:\models\net.py", "Net")

