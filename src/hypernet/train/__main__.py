"""``python -m hypernet.train NAME --data DIR --model CKPT``, also under ``accelerate launch -m hypernet.train``."""

from __future__ import annotations

import typer

from hypernet.settings.cli import run_app
from hypernet.train.command import train


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    run_app(app, argv, "hypernet-train")


if __name__ == "__main__":
    main()
