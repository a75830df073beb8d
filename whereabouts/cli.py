"""The admin CLI: ``whereabouts <command>``. Each command imports its code lazily."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Sequence

from . import __version__


def _validate(argv: List[str]) -> int:
    from .validate import main

    return main(argv)


def _install(argv: List[str]) -> int:
    from .install import main

    return main(argv)


def _controlloop(argv: List[str]) -> int:
    from .controllers.podloop import main

    return main(argv)


def _reconcile(argv: List[str]) -> int:
    from .controllers.reconciler import main

    return main(argv)


def _pools(argv: List[str]) -> int:
    from .show import main

    return main(argv)


def _version(argv: List[str]) -> int:
    print(f"whereabouts {__version__} (python {sys.version.split()[0]})")
    return 0


COMMANDS: Dict[str, tuple[Callable[[List[str]], int], str]] = {
    "validate": (_validate, "check netconfs, conflists or NetworkAttachmentDefinitions"),
    "install": (_install, "install the plugin and its configuration on a host"),
    "controlloop": (_controlloop, "node agent: free addresses of this node's deleted pods"),
    "reconcile": (_reconcile, "free orphaned allocations cluster-wide (the CronJob)"),
    "pools": (_pools, "print the allocation table of a datastore"),
    "version": (_version, "print the version"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="whereabouts",
        description="Cluster-wide IPAM for CNI. Run by the container runtime with "
        "CNI_COMMAND set, it is the IPAM plugin; otherwise these commands:",
        epilog="\n".join(f"  {name:12} {text}" for name, (_, text) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not args:
        parser.print_help()
        return 2
    ns = parser.parse_args(args[:1])
    handler, _ = COMMANDS[ns.command]
    return handler(args[1:])


if __name__ == "__main__":
    sys.exit(main())
