"""`python -m procq.cli`: the same as the `procq` command."""

from procq.cli.main import main

main(prog_name="procq")
