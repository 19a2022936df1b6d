"""``python -m flows train --preset tiny``: the training commands without the console script."""

from flows.cli import app

app(prog_name="python -m flows")
