"""`python -m fleetdispatch.quotaguard`: the quota guard's old module path, kept for session images that
call it. The guard is `fleetdispatch.session.quotaguard`."""

import sys

from fleetdispatch.session.quotaguard import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m fleetdispatch.quotaguard"))
