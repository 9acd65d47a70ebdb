"""``python -m hypernet.train NAME --data DIR --model CKPT``, also under ``accelerate launch -m hypernet.train``."""

from __future__ import annotations

import sys

import click
import typer

from hypernet.errors import HypernetError
from hypernet.train.command import train


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    try:
        app(args=argv, prog_name="hypernet-train", standalone_mode=False)
    except HypernetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
