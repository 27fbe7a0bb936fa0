"""The `rscc` console script, kept outside the `rscc` package so that it runs before the package is imported.

Importing `rscc` takes about 8 s (torch and transformers), which `rscc eval` skips (`RSCC_LAZY_IMPORT`). It needs
METEOR, whose JVM takes 12-15 s on two cores to load its paraphrase table: started here, first, it loads while Python
computes the other metrics, and `rscc.metrics` takes it over. This module holds METEOR's command line for the whole
package.
"""

import atexit
import os
import shutil
import subprocess
import sys

# pycocoevalcap's METEOR 1.5 command (`Meteor.meteor_cmd`), plus JVM memory and GC options that only change how fast
# the JVM starts (an initial heap of the full 2 GB and the parallel collector: about 3 s less on two cores).
METEOR_COMMAND = (
    "java", "-Xms2G", "-XX:+UseParallelGC", "-jar", "-Xmx2G", "meteor-1.5.jar",
    "-", "-", "-stdio", "-l", "en", "-norm",
)

_prestarted_meteor = None


def start_meteor_process() -> subprocess.Popen:
    """Start pycocoevalcap's METEOR 1.5 jar in its `-stdio` mode (SCORE and EVAL lines on stdin)."""
    import pycocoevalcap.meteor.meteor as meteor_module  # a light import: the module only holds the jar's wrapper

    return subprocess.Popen(
        METEOR_COMMAND,
        cwd=os.path.dirname(os.path.abspath(meteor_module.__file__)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def take_prestarted_meteor():
    """The METEOR process this console script started, if it did and it still runs; each is handed out once."""
    global _prestarted_meteor
    process, _prestarted_meteor = _prestarted_meteor, None
    return process if process is not None and process.poll() is None else None


@atexit.register
def _stop_untaken_meteor() -> None:
    # A command that failed before scoring leaves the JVM loading; it would only exit after loading.
    if _prestarted_meteor is not None and _prestarted_meteor.poll() is None:
        _prestarted_meteor.kill()
        _prestarted_meteor.wait()


def _eval_needs_meteor(arguments: list) -> bool:
    if arguments[:1] != ["eval"] or any(flag in arguments for flag in ("-h", "--help")):
        return False
    if "--metrics" not in arguments:
        return True
    return any(name in arguments for name in ("METEOR", "S_m"))


def main() -> int:
    global _prestarted_meteor
    if _eval_needs_meteor(sys.argv[1:]) and shutil.which("java") is not None:
        _prestarted_meteor = start_meteor_process()
    if sys.argv[1:2] == ["eval"]:
        os.environ.setdefault("RSCC_LAZY_IMPORT", "1")  # scoring needs neither torch nor transformers
    from rscc.cli import main as run_command

    return run_command()


if __name__ == "__main__":
    # Run through the module's importable name, so that `rscc.metrics` finds the process it started.
    from rscc_console import main as console_main

    sys.exit(console_main())
