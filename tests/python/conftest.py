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


def mapping_of(address):
    """(path, inode, permissions, file offset of the page) of this process's
    mapping that holds `address` (/proc/self/maps), or None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                page = (address - start) // 4096 * 4096 + int(fields[2], 16)
                return (fields[5] if len(fields) > 5 else "", int(fields[4]), fields[1], page)
    return None


def file_offset(address):
    """(path, inode, offset in that file) of the byte at `address`."""
    path, inode, _, page = mapping_of(address)
    return path, inode, page + address % 4096
