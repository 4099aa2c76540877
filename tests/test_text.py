"""The one text formatting of bytes, counts, SI quantities and tables that the CLI, report and figures share."""

from ckptboard.dashboard.text import format_bytes, format_count, format_si, format_table, module_label


def test_format_bytes_uses_binary_units():
    assert format_bytes(1536) == "1.5 KiB"  # 1536 / 1024
    assert format_bytes(12) == "12 B"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"  # 3 * 1024^3 / 1024^3
    assert format_bytes(None) == ""


def test_format_count_and_si():
    assert format_count(4423936) == "4,423,936"
    assert format_count(None) == ""
    assert format_si(4423936, "FLOP") == "4.42 MFLOP"  # 4,423,936 / 10^6 = 4.423936
    assert format_si(999, "FLOP") == "999 FLOP"


def test_module_label_indents_by_depth():
    assert module_label("") == "(model)"
    assert module_label("layer1.0.conv1") == "      conv1"  # depth 3: two spaces per level


def test_format_table_aligns_and_rules():
    rows = [["fc.weight", "128"], ["b", "8"]]
    assert format_table(["name", "n"], rows).splitlines() == ["name         n", "fc.weight  128", "b            8"]
    assert format_table(["name", "n"], rows, right=(), rule=True).splitlines() == [
        "name       n", "---------  ---", "fc.weight  128", "b          8",
    ]
