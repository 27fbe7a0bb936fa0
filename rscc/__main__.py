"""`python -m rscc ...`: the `rscc` console script, in the form `accelerate launch -m rscc caption ...` starts."""

import sys

from rscc_console import main

if __name__ == "__main__":
    sys.exit(main())
