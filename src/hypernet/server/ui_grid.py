"""The txt2img tab's "Script: X/Y/Z plot" panel: three axes and A1111's options, sent as the API's ``script_args``.

Built inside the tab by ``ui.py``; :meth:`XYZControls.fields` turns the panel's values into the request fields
(none while every axis is "Nothing"), so the plot runs through the same request path as an API client's.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from hypernet.grid.axes import TXT2IMG_AXES
from hypernet.server.xyz import SCRIPT_NAME

AXIS_LABELS = [axis.label for axis in TXT2IMG_AXES if axis.supported]
EXAMPLES = {"Hypernetwork": "style-500, style-1000, None", "Hypernet str.": "0.5, 0.75, 1", "Seed": "1, 2",
            "Steps": "10-30 (+10)", "CFG Scale": "5, 7, 9", "Prompt S/R": "castle, house"}


class XYZControls:
    """The panel's components; ``inputs`` in the order :meth:`fields` reads them."""

    def __init__(self) -> None:
        with gr.Accordion("Script: X/Y/Z plot", open=False, elem_id="xyz"):
            gr.Markdown("Values are comma-separated; ranges as in A1111 (`1-5`, `1-10 (+2)`, `0.5-1 [3]`). A "
                        "**Hypernetwork** axis takes network names (a training run's snapshots: `name-500, name-1000`; "
                        "`None`: no network); **Hypernet str.** sets the multiplier of the prompt's `<hypernet:...>` "
                        "tags.", elem_classes="hn-note")
            self.axes: list[tuple[Any, Any]] = []
            for which in "XYZ":
                with gr.Row():
                    kind = gr.Dropdown(AXIS_LABELS, value="Nothing", label=f"{which} type", elem_id=f"xyz_{which.lower()}_type",
                                       scale=1)
                    values = gr.Textbox(label=f"{which} values", elem_id=f"xyz_{which.lower()}_values", scale=3)
                kind.change(lambda k: gr.update(placeholder=EXAMPLES.get(k, "")), kind, values)
                self.axes.append((kind, values))
            with gr.Row():
                self.legend = gr.Checkbox(value=True, label="Draw legend", elem_id="xyz_legend")
                self.keep_random = gr.Checkbox(label="Keep -1 for seeds", elem_id="xyz_keep_random")
                self.lone = gr.Checkbox(label="Include sub images", elem_id="xyz_lone")
                self.sub_grids = gr.Checkbox(label="Include sub grids", elem_id="xyz_sub_grids")
                self.margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)", elem_id="xyz_margin")
        self.inputs = [c for pair in self.axes for c in pair] + [self.legend, self.keep_random, self.lone,
                                                                 self.sub_grids, self.margin]

    @staticmethod
    def fields(values: list[Any]) -> dict[str, Any]:
        """``script_name``/``script_args`` for the panel's values (A1111's 18-value layout), or nothing."""
        xt, xv, yt, yv, zt, zv, legend, keep_random, lone, sub_grids, margin = values
        types = [next(i for i, a in enumerate(TXT2IMG_AXES) if a.label == (t or "Nothing")) for t in (xt, yt, zt)]
        if not any(types):
            return {}
        args = [types[0], xv or "", None, types[1], yv or "", None, types[2], zv or "", None, bool(legend),
                bool(lone), bool(sub_grids), bool(keep_random), False, False, False, int(margin or 0), True]
        return {"script_name": SCRIPT_NAME, "script_args": args}
