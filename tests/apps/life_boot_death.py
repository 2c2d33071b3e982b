"""Dies at import, before the worker can say hello: rwsgi-gw must give up (exit 3)."""

import os
import sys

sys.stderr.write("life_boot_death: exiting with code 5 at import\n")
sys.stderr.flush()
os._exit(5)
