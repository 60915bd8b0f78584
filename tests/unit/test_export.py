"""The export preprocessor: widget outputs become static HTML a reader sees offline."""

from __future__ import annotations

from typing import Any

import nbformat
from nbconvert import HTMLExporter
from nbformat import NotebookNode

from alphaflow_live.export import WIDGET_STATE, WIDGET_VIEW, WidgetSnapshots

OURS = {"_anywidget_id": "alphaflow_live.widgets.PortfolioWidget", "component": "portfolio"}


def view(model_id: str, **data: str) -> NotebookNode:
    bundle: dict[str, Any] = {WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 1}}
    return nbformat.v4.new_output("display_data", data={**bundle, "text/plain": "<widget>", **data})


def notebook(outputs: list[NotebookNode], states: dict[str, dict[str, Any]]) -> NotebookNode:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("live.widget()")
    cell.outputs = outputs
    nb.cells = [nbformat.v4.new_markdown_cell("# Report"), cell]
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": states, "version_major": 2, "version_minor": 0}}
    return nb


def anywidget_state(**state: Any) -> dict[str, Any]:
    return {
        "model_name": "AnyModel",
        "model_module": "anywidget",
        "model_module_version": "~0.9.*",
        "state": state,
    }


def run(nb: NotebookNode) -> NotebookNode:
    out, _ = WidgetSnapshots().preprocess(nb, {})
    return out


def test_a_widget_with_a_static_html_beside_it_becomes_that_html_and_the_widget_state_goes() -> None:
    nb = run(notebook([view("w1", **{"text/html": "<div class='afl-snap'>as displayed</div>"})], {}))

    (output,) = nb.cells[1].outputs
    assert WIDGET_VIEW not in output.data
    assert output.data["text/html"] == "<div class='afl-snap'>as displayed</div>"
    assert "widgets" not in nb.metadata, "no widget left: no state, so no widget manager from a CDN"


def test_the_snapshot_an_alphaflow_widget_saved_last_wins_over_the_one_it_was_displayed_with() -> None:
    states = {"w1": anywidget_state(**OURS, snapshot="<div class='afl-snap'>after the last cell</div>")}
    nb = run(notebook([view("w1", **{"text/html": "<div>as displayed</div>"})], states))

    assert nb.cells[1].outputs[0].data["text/html"] == "<div class='afl-snap'>after the last cell</div>"


def test_a_snapshot_trait_of_someone_elses_widget_is_not_taken_for_html() -> None:
    states = {"w1": anywidget_state(_anywidget_id="other.Widget", snapshot="not html")}
    nb = run(notebook([view("w1", **{"text/html": "<div>theirs</div>"})], states))

    assert nb.cells[1].outputs[0].data["text/html"] == "<div>theirs</div>"


def test_an_output_widget_becomes_the_outputs_it_captured() -> None:
    log = [{"output_type": "stream", "name": "stdout", "text": "filled buy 5 AAPL @ 190.10\n"}]
    states = {
        "log": {
            "model_name": "OutputModel",
            "model_module": "@jupyter-widgets/output",
            "model_module_version": "1.0.0",
            "state": {"outputs": log, "layout": "IPY_MODEL_layout"},
        }
    }
    nb = run(notebook([view("log")], states))

    (output,) = nb.cells[1].outputs
    assert output.output_type == "stream" and output.text == "filled buy 5 AAPL @ 190.10\n"
    assert "widgets" not in nb.metadata


def test_a_widget_with_nothing_static_stays_and_keeps_its_state() -> None:
    states = {
        "slider": {"model_name": "IntSliderModel", "model_module": "@jupyter-widgets/controls", "state": {}}
    }
    nb = run(notebook([view("slider"), view("w1", **{"text/html": "<div>ours</div>"})], states))

    assert WIDGET_VIEW in nb.cells[1].outputs[0].data
    assert WIDGET_VIEW not in nb.cells[1].outputs[1].data
    assert "slider" in nb.metadata["widgets"][WIDGET_STATE]["state"]


def test_the_html_export_loads_no_widget_manager_and_shows_the_snapshot() -> None:
    states = {"w1": anywidget_state(**OURS, snapshot='<div class="afl-snap">last</div>')}
    nb = notebook([view("w1", **{"text/html": "<div>first</div>"})], states)
    exporter = HTMLExporter(preprocessors=[WidgetSnapshots])

    body, _ = exporter.from_notebook_node(nb)

    assert '<div class="afl-snap">last</div>' in body
    for needle in ("embed-amd", "html-manager", WIDGET_STATE, WIDGET_VIEW):
        assert needle not in body, f"expected no {needle} in the page"
