"""`python -m t5lite COMMAND ...` is the `t5lite` command."""
from t5lite.main import run

run()
