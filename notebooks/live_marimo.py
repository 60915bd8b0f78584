"""The live portfolio as a marimo app: `marimo run notebooks/live_marimo.py` (or `marimo edit`).

Like live_portfolio.ipynb, it reads ALPHAFLOW_URL and ALPHAFLOW_TOKEN from the
environment of the marimo server (`make demo` prints both).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="AlphaFlow Live")


@app.cell
def _():
    import marimo as mo

    import alphaflow_live as afl

    return afl, mo


@app.cell
def _(mo):
    mo.md(
        """
        # Live portfolio

        The portfolio streamed from the AlphaFlow Live server named by `ALPHAFLOW_URL`.
        P&L cells flash green on a gain and shake red on a loss; the badge says how
        fresh the data is. It keeps moving by itself: there is nothing to run.
        """
    )


@app.cell
def _(afl):
    # The stream runs in its own thread; re-running this cell replaces it.
    live = afl.connect()
    _live_now = live.wait_for(lambda live: live.status == "live", timeout=30)
    return (live,)


@app.cell
def _(afl, live, mo):
    portfolio = mo.ui.anywidget(afl.PortfolioWidget(live))
    portfolio  # noqa: B018 - a cell shows its last expression


if __name__ == "__main__":
    app.run()
