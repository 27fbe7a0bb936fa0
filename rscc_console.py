"""The `rscc` console script, kept outside the `rscc` package so that it decides how the package is imported.

Importing `rscc` takes about 8 s (torch and transformers), which `rscc eval` skips (`RSCC_LAZY_IMPORT`). It needs
METEOR, whose JVM takes 12-15 s on two cores to load its paraphrase table: started here, first, it loads while Python
computes the other metrics, and `rscc.metrics.meteor` hands it to the first scorer that needs it.
"""

import os
import shutil
import sys


def _eval_needs_meteor(arguments: list) -> bool:
    if arguments[:1] != ["eval"] or any(flag in arguments for flag in ("-h", "--help")):
        return False
    if "--metrics" not in arguments:
        return True
    return any(name in arguments for name in ("METEOR", "S_m"))


def main() -> int:
    if sys.argv[1:2] == ["eval"]:
        os.environ.setdefault("RSCC_LAZY_IMPORT", "1")  # scoring needs neither torch nor transformers
    if _eval_needs_meteor(sys.argv[1:]) and shutil.which("java") is not None:
        from rscc.metrics.meteor import prestart_meteor

        prestart_meteor()
    from rscc.cli import main as run_command

    return run_command()


if __name__ == "__main__":
    sys.exit(main())
