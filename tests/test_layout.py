"""Claims of the layout (vmamba_ref/tools/layout.py, docs/layout.md): the import arrows run one way.

- No import cycle between any two files of `vmamba_ref` and `vmamba_fast`.
- The oracle and the contract import nothing of `vmamba_fast`; `vmamba_fast` imports only the
  contract of `vmamba_ref`; the network never imports the tools; every arrow is one `ALLOWED` lists.
- The checker itself fails on a planted cycle and a planted forbidden arrow.
- The docs page and the README's layout section name every module that exists.
"""

import re
import shutil

from vmamba_ref.tools.layout import (
    ROOT,
    cycles,
    forbidden_arrows,
    import_graph,
    layer_of,
    layout_table,
    modules,
)


def test_no_import_cycle_between_files():
    assert cycles(import_graph()) == []


def test_every_arrow_runs_the_allowed_way():
    assert forbidden_arrows(import_graph()) == []


def test_fast_imports_only_the_contract_and_the_oracle_no_fast():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("vmamba_fast"):
            assert {t for t in targets if t.startswith("vmamba_ref")} <= {"vmamba_ref.contract"}, name
        if layer_of(name) in ("oracle", "contract"):
            assert not any(t.startswith("vmamba_fast") for t in targets), name
        if layer_of(name) == "network":
            assert not any(layer_of(t) == "tools" for t in targets), name


def _copy_tree(tmp_path):
    for package in ("vmamba_ref", "vmamba_fast"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_checker_finds_a_planted_cycle(tmp_path):
    root = _copy_tree(tmp_path)
    contract = root / "vmamba_ref" / "contract.py"
    contract.write_text(contract.read_text() + "\nfrom vmamba_ref.selective_scan import selective_scan\n")
    graph = import_graph(root)
    assert ["vmamba_ref.contract", "vmamba_ref.selective_scan"] in cycles(graph)
    assert ("vmamba_ref.contract", "vmamba_ref.selective_scan") in forbidden_arrows(graph)


def test_the_checker_finds_an_import_inside_a_function_and_a_relative_import(tmp_path):
    root = _copy_tree(tmp_path)
    ops = root / "vmamba_fast" / "ops.py"
    ops.write_text(ops.read_text() + "\n\ndef _late():\n    from vmamba_ref import model\n")
    oracle = root / "vmamba_ref" / "cross_scan.py"
    oracle.write_text(oracle.read_text() + "\nfrom . import ss2d\n")
    arrows = forbidden_arrows(import_graph(root))
    assert ("vmamba_fast.ops", "vmamba_ref.model") in arrows
    assert ("vmamba_ref.cross_scan", "vmamba_ref.ss2d") in arrows


def test_docs_and_readme_name_every_module():
    page = (ROOT / "docs" / "layout.md").read_text()
    assert "{{ layout_table() }}" in page  # the table is drawn from the code at build time
    assert layout_table().count("`vmamba_") == len(modules())
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(vmamba_(?:ref|fast)/[\w/]*?)(?:\.py)?/?`", section))
    for name, path in modules().items():
        relative = path.relative_to(ROOT)
        if relative.parent.name in ("vmamba_ref", "vmamba_fast"):  # a top-level file: by name
            if path.name != "__init__.py":
                assert str(relative.with_suffix("")) in named, f"the README's layout does not name {name}"
        else:  # a subpackage: by its folder
            assert str(relative.parent) in named, f"the README's layout does not name {name}'s folder"
