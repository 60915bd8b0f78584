"""Exported reports: an nbconvert preprocessor that leaves live widgets as static HTML.

A notebook exported to HTML has no kernel behind it, and nbconvert shows a
widget only through the widget manager it loads from a CDN: offline, the
widget's output is blank. This preprocessor turns every widget output into
what a reader can see with no script and no network:

* a widget whose output carries a ``text/html`` beside the widget view (the
  AlphaFlow widgets' static snapshot: positions, account, "as of") becomes
  that HTML. When the notebook's saved widget state holds a newer snapshot of
  an AlphaFlow widget (a ``snapshot`` trait, refreshed by the kernel), that
  one wins: it is the widget's last state, not the one it was displayed with;
* an ``ipywidgets.Output`` becomes the outputs it held (a fill log, say);
* any other widget is left as it was.

When no widget view is left, the saved widget state goes too, and with it the
template's widget-manager script: the page makes no request at all.

Use it on any export (``--execute`` or a notebook saved from JupyterLab)::

    jupyter nbconvert --to html --execute \
        --HTMLExporter.preprocessors=alphaflow_live.export.WidgetSnapshots notebook.ipynb

It needs nbconvert (in the notebook server's environment, not the kernel's);
nothing in the kernel imports this module.
"""

from __future__ import annotations

from typing import Any

from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode, from_dict

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# The AlphaFlow widgets, by the id anywidget gives each widget class.
OUR_WIDGETS = "alphaflow_live."
OUTPUT_MODEL = ("@jupyter-widgets/output", "OutputModel")


class WidgetSnapshots(Preprocessor):
    """Widget outputs → their static HTML (or captured outputs), for a page that works offline."""

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]) -> tuple[NotebookNode, dict[str, Any]]:
        states: dict[str, Any] = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        views_left = 0
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            outputs = [static for output in cell.outputs for static in static_outputs(output, states)]
            views_left += sum(WIDGET_VIEW in output.get("data", {}) for output in outputs)
            cell.outputs = outputs
        if not views_left and "widgets" in nb.metadata:
            # Nothing needs the widget manager any more: no state, so no script from the CDN.
            del nb.metadata["widgets"]
        return nb, resources


def static_outputs(output: NotebookNode, states: dict[str, Any], depth: int = 0) -> list[NotebookNode]:
    """What ``output`` becomes in a static page: itself unless it shows a widget that can do without."""
    data = output.get("data", {})
    view = data.get(WIDGET_VIEW)
    if not isinstance(view, dict):
        return [output]
    saved = states.get(view.get("model_id", ""), {})
    state: dict[str, Any] = saved.get("state", {})
    snapshot = state.get("snapshot") if str(state.get("_anywidget_id", "")).startswith(OUR_WIDGETS) else None
    if isinstance(snapshot, str) and snapshot:
        data["text/html"] = snapshot
    if "text/html" in data:
        del data[WIDGET_VIEW]
        return [output]
    if (saved.get("model_module"), saved.get("model_name")) == OUTPUT_MODEL and depth < 8:
        captured = [from_dict(dict(o)) for o in state.get("outputs", [])]  # type: ignore[no-untyped-call]
        return [static for o in captured for static in static_outputs(o, states, depth + 1)]
    return [output]
