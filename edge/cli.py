"""The `edge` command line. Every command is a few lines calling the public API.

Errors derived from EdgeError print one line (``error: ...``) and exit non-zero; heavy backends
(torch, executorch, onnxruntime, llama.cpp) are imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from edge.errors import EdgeError


def friendly(fn):
    """Turn EdgeError (and missing files) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@click.group()
@click.version_option(package_name="edge")
def main() -> None:
    """edge: compile a language model for an edge device and predict how it will run there."""


# ---- models ---------------------------------------------------------------------------------
# (model commands: models list/show, eval, generate)


# ---- targets and simulation -------------------------------------------------------------------
# (target commands: targets list/show/probe, simulate)


if __name__ == "__main__":
    main()
