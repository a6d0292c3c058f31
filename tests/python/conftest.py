"""Shared by the Python suites: where scripts/test.sh put things."""

import os

import pytest

# scripts/test.sh installs the package (pip install --target) and sets
# ZCWRAP_REQUIRE_PACKAGE=1: there a missing package is a failure, not a skip.
REQUIRE_PACKAGE = os.environ.get("ZCWRAP_REQUIRE_PACKAGE") == "1"


def import_zcwrap():
    """The zcwrap package, or a skip saying why it is missing."""
    try:
        import zcwrap
    except ImportError as e:
        if REQUIRE_PACKAGE:
            raise
        pytest.skip(f"the zcwrap Python package is not importable ({e}); scripts/test.sh builds it",
                    allow_module_level=True)
    return zcwrap
