"""t5lite's commands: one module per command, each with `main(argv: list[str]) -> int`."""
