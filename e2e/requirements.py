"""What a test needs from the machine, and what happens when it is missing.

A missing server, binary or privilege fails the test that needs it, locally as on CI:
a skipped test proves nothing, and ``ci/setup`` installs everything the suite uses.
"""

from __future__ import annotations

from typing import NoReturn

import pytest


def missing(what: str) -> NoReturn:
    pytest.fail(f"{what}; run ci/setup (as root) to install the test bed", pytrace=False)
