"""The `intake` command: parse, call the module that owns the job, print.

One module per part of the operator's work, each registering its commands
on the one Typer app in `root`. `intake --help` lists them in the order of
these imports: setting the event up, selling, draining, then the rest.
"""

# isort would list the commands alphabetically by module.
from intake_cli.faces.cli import event  # noqa: I001, F401  (each registers its commands)
from intake_cli.faces.cli import sales  # noqa: F401
from intake_cli.faces.cli import opening  # noqa: F401
from intake_cli.faces.cli import drain  # noqa: F401
from intake_cli.faces.cli import dead_letters  # noqa: F401
from intake_cli.faces.cli import operate  # noqa: F401
from intake_cli.faces.cli import audit  # noqa: F401
from intake_cli.faces.cli import tools  # noqa: F401
from intake_cli.faces.cli.root import app, main

__all__ = ["app", "main"]
