"""The `t5lite` commands: argument parsing, printing and exit codes, one module per command.

Commands sit on top of the library: they import t5lite's modules; no library module imports them.
"""
