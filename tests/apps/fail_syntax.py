"""Cannot be compiled."""

def broken(:  # FAIL-SYNTAX-MARKER
    pass
