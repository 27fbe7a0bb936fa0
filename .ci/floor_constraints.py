"""Print a pip constraints file that holds every direct dependency of rscc at the lower bound setup.cfg declares.

    python .ci/floor_constraints.py > floor.txt && pip install -c floor.txt torch==2.13.0 -e ".[test]"

Read from setup.cfg at run time, so the floor CI tests cannot drift from the floor users are promised.
"""

import configparser
import sys
from pathlib import Path

from packaging.requirements import Requirement


def declared_requirements(setup_cfg: Path) -> list[Requirement]:
    """install_requires and every extra of setup.cfg, each requirement once."""
    setup = configparser.ConfigParser()
    setup.read(setup_cfg)
    sections = [setup["options"]["install_requires"], *setup["options.extras_require"].values()]
    lines = [line.strip() for section in sections for line in section.splitlines()]
    unique = {}
    for line in lines:
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            unique.setdefault((requirement.name.lower(), str(requirement.specifier)), requirement)
    return list(unique.values())


def floor_pins(requirements: list[Requirement]) -> list[str]:
    """`name==floor` for each requirement; a requirement without a `>=` floor is an error."""
    pins = {}
    for requirement in requirements:
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if len(floors) != 1:
            raise SystemExit(f"setup.cfg: {requirement} needs exactly one '>=' lower bound, the floor CI tests")
        name = requirement.name.lower()
        if pins.get(name, floors[0]) != floors[0]:
            raise SystemExit(f"setup.cfg: {requirement.name} has two floors, {pins[name]} and {floors[0]}")
        pins[name] = floors[0]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    setup_cfg = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "setup.cfg"
    print("\n".join(floor_pins(declared_requirements(setup_cfg))))
