"""The `t5lite` commands: one module per command, each with `main(argv: list[str]) -> int`."""
