"""Entry point of ``whereabouts.pyz`` and ``python -m whereabouts``.

Executed by the container runtime (CNI_COMMAND set) it speaks CNI; with arguments it
is the admin CLI. Only the branch taken is imported.
"""

import os
import sys


def run() -> int:
    if os.environ.get("CNI_COMMAND") == "VERSION":
        # Runtimes probe VERSION often; answer it without loading the plugin.
        from whereabouts.cni.versions import LATEST, SUPPORTED_VERSIONS

        versions = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        sys.stdout.write(f'{{"cniVersion": "{LATEST}", "supportedVersions": [{versions}]}}\n')
        return 0
    if "CNI_COMMAND" in os.environ or len(sys.argv) <= 1:
        from whereabouts.cni.plugin import main as cni_main

        return cni_main()
    from whereabouts.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(run())
