"""The widget's front end as anywidget gets it: js/src joined into one ES module (alphaflow_live.frontend)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from alphaflow_live import frontend
from alphaflow_live.widgets import PortfolioWidget

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "js" / "src"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_widgets_load_the_joined_source_of_the_checkout() -> None:
    assert frontend.source_dir() == SOURCE
    assert PortfolioWidget._esm == frontend.widget_esm(SOURCE)
    assert PortfolioWidget._css == (SOURCE / "widget.css").read_text()


def test_the_joined_module_imports_nothing_and_exports_only_from_the_entry() -> None:
    esm = frontend.widget_esm(SOURCE)

    assert not re.search(r"^import\b", esm, re.M), "a relative import cannot resolve from anywidget's blob"
    assert re.findall(r"^export\b.*$", esm, re.M) == [
        "export { classifyFreshness, mergeDelta };",
        "export default { render };",
    ]


def test_every_module_the_entry_imports_is_in_it_once_after_its_own_imports() -> None:
    esm = frontend.widget_esm(SOURCE)

    scopes = re.findall(r"^const (__afl_\w+) = \(\(\) => \{$", esm, re.M)
    assert len(scopes) == len(set(scopes))
    assert {"__afl_format", "__afl_dom", "__afl_table", "__afl_parts_chart"} <= set(scopes)
    assert "__afl_types" not in scopes, "types.js holds types for tsc only; nothing imports it at run time"
    assert scopes.index("__afl_format") < scopes.index("__afl_table") < scopes.index("__afl_parts_positions")
    for name in ("mountAccount", "mountChart", "mountPositions", "mountOrders", "mountFills", "mountToasts"):
        assert f"function {name}(" in esm


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (the front end's tests run on it)")
def test_node_imports_the_joined_module_and_finds_render(tmp_path: Path) -> None:
    (tmp_path / "widget.mjs").write_text(frontend.widget_esm(SOURCE))
    (tmp_path / "check.mjs").write_text(
        'import widget, * as named from "./widget.mjs";\n'
        "const names = Object.keys(named).sort().join(',');\n"
        "if (typeof widget.render !== 'function') throw new Error('no default.render');\n"
        "if (names !== 'classifyFreshness,default,mergeDelta') throw new Error('exports: ' + names);\n"
        "const rows = { version: 1, equity: [[1, 2, 3]] };\n"
        "const merged = named.mergeDelta(rows, { version: 2, equity: [[4, 5, 6]] });\n"
        "console.log(JSON.stringify(merged.equity));\n"
    )

    done = subprocess.run(["node", "check.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[1,2,3],[4,5,6]]"


def test_imports_bind_to_the_scope_of_the_module_they_name(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "widget.js": 'import { twice, ONE as one } from "./lib/math.js";\nexport default { twice, one };\n',
        "lib/math.js": "export const ONE = 1;\nexport function twice(x) {\n  return 2 * x;\n}\n",
    })  # fmt: skip

    esm = frontend.widget_esm(root)

    assert "const __afl_lib_math = (() => {" in esm
    assert "return { ONE, twice };" in esm
    assert "const { twice, ONE: one } = __afl_lib_math;" in esm
    assert "\nconst ONE = 1;" in esm and "\nfunction twice(x)" in esm, "no export keyword inside a scope"


def test_an_export_list_may_rename(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "widget.js": 'import { shown } from "./a.js";\nexport default { render: shown };\n',
        "a.js": "function hidden() {}\nexport { hidden as shown };\n",
    })  # fmt: skip

    assert "return { shown: hidden };" in frontend.widget_esm(root)


def test_an_import_cycle_is_refused_with_its_path(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "widget.js": 'import { a } from "./a.js";\nexport default { render: a };\n',
        "a.js": 'import { b } from "./b.js";\nexport const a = 1;\n',
        "b.js": 'import { a } from "./a.js";\nexport const b = a;\n',
    })  # fmt: skip

    with pytest.raises(ValueError, match=r"import cycle a\.js -> b\.js -> a\.js"):
        frontend.widget_esm(root)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('import * as all from "./a.js";', "a namespace import"),
        ('import a from "./a.js";', "a default import"),
        ('import { a } from "https://cdn.example/a.js";', "an import from the network"),
        ("export default 1;", "a default export outside the entry"),
        ('export * from "./a.js";', "a re-export"),
    ],
)
def test_a_form_it_does_not_join_is_an_error_naming_the_line(tmp_path: Path, line: str, why: str) -> None:
    root = write(tmp_path, {
        "widget.js": 'import { b } from "./b.js";\nexport default { render: b };\n',
        "b.js": f"// {why}\n{line}\nexport const b = 1;\n",
        "a.js": "export const a = 1;\n",
    })  # fmt: skip

    with pytest.raises(ValueError, match=r"b\.js:2: .* is not a form frontend\.py joins"):
        frontend.widget_esm(root)


def test_a_missing_module_is_named(tmp_path: Path) -> None:
    root = write(tmp_path, {"widget.js": 'import { a } from "./gone.js";\nexport default { render: a };\n'})

    with pytest.raises(ValueError, match=r"gone\.js not found"):
        frontend.widget_esm(root)
