"""An app factory that raises when called."""


def make():
    raise RuntimeError("FAIL-FACTORY-RAISED")
