"""The `rscc` console script, kept outside the `rscc` package so that it decides how the package is imported.

Importing `rscc` takes seconds (torch and transformers): the console script imports it lazily (`RSCC_LAZY_IMPORT`),
so help and argument errors start at once and `rscc eval` never imports them. `rscc eval` needs
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
    # `import rscc` without torch and transformers: help, argument errors and `rscc eval` need neither; a command that
    # does imports them when it runs (`rscc.cli`). Set for this import only, so that processes the command starts
    # (Ray workers, accelerate's) import rscc as usual.
    lazy_before = os.environ.get("RSCC_LAZY_IMPORT")
    os.environ["RSCC_LAZY_IMPORT"] = "1"
    try:
        from rscc.cli import main as run_command
    finally:
        if lazy_before is None:
            del os.environ["RSCC_LAZY_IMPORT"]
        else:
            os.environ["RSCC_LAZY_IMPORT"] = lazy_before
    if _eval_needs_meteor(sys.argv[1:]) and shutil.which("java") is not None:
        from rscc.metrics.meteor import prestart_meteor

        prestart_meteor()
    return run_command()


if __name__ == "__main__":
    sys.exit(main())
