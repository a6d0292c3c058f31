#!/usr/bin/env python3
"""A small pkg-config for scripts/gpu-check.sh on machines that have none.

Covers what Meson's dependency() asks (--version, --modversion, --cflags,
--libs, --variable=NAME, --exists) over the .pc files found in
PKG_CONFIG_PATH and PKG_CONFIG_LIBDIR, following Requires. Not a general
replacement: no version constraints beyond ignoring them, no sysroot.
"""

import os
import re
import sys

VERSION = "0.29.2"  # what Meson sees from --version


class Missing(Exception):
    pass


def search_path():
    dirs = []
    for var in ("PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    return dirs


def find(name):
    for d in search_path():
        path = os.path.join(d, name + ".pc")
        if os.path.isfile(path):
            return path
    raise Missing(name)


def parse(path, defines):
    """Variables and fields of a .pc file, with ${var} expanded."""
    variables = {"pcfiledir": os.path.dirname(os.path.abspath(path))}
    fields = {}

    def expand(text):
        for _ in range(32):  # nested references, bounded
            new = re.sub(r"\$\{([^}]*)\}", lambda m: defines.get(m.group(1), variables.get(m.group(1), "")), text)
            if new == text:
                break
            text = new
        return text.replace("$$", "$")

    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.]+)\s*=\s*(.*)$", line)
        if m:
            variables[m.group(1)] = defines.get(m.group(1), expand(m.group(2).strip()))
            continue
        m = re.match(r"^([A-Za-z0-9_.]+)\s*:\s*(.*)$", line)
        if m:
            fields[m.group(1).lower()] = expand(m.group(2).strip())
    return variables, fields


def requires(fields, static):
    names = fields.get("requires", "") + ("," + fields.get("requires.private", "") if static else "")
    out = []
    for token in re.split(r"[\s,]+", names):
        if token and not re.match(r"^[<>=!]+$", token) and not re.match(r"^[0-9][0-9A-Za-z.+~-]*$", token):
            out.append(token)
    return out


def collect(names, static, defines, seen):
    cflags, libs = [], []
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        _, fields = parse(find(name), defines)
        cflags += fields.get("cflags", "").split()
        libs += fields.get("libs", "").split()
        if static:
            libs += fields.get("libs.private", "").split()
        sub_c, sub_l = collect(requires(fields, static), static, defines, seen)
        cflags += sub_c
        libs += sub_l
    return cflags, libs


def unique(flags):
    out = []
    for flag in flags:
        if flag not in out:
            out.append(flag)
    return out


def main(argv):
    modes = set()
    variable = None
    defines = {}
    names = []
    for arg in argv:
        if arg in ("--version",):
            print(VERSION)
            return 0
        if arg.startswith("--atleast-pkgconfig-version"):
            return 0
        if arg.startswith("--variable="):
            variable = arg.split("=", 1)[1]
        elif arg.startswith("--define-variable="):
            key, _, value = arg.split("=", 1)[1].partition("=")
            defines[key] = value
        elif arg.startswith("--"):
            modes.add(arg)
        elif not re.match(r"^[<>=!]+$", arg) and not (names and re.match(r"^[0-9]", arg)):
            names.append(arg)
    static = "--static" in modes
    try:
        if "--list-all" in modes:
            for d in search_path():
                for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                    if entry.endswith(".pc"):
                        print(entry[:-3])
            return 0
        if not names:
            print("Must specify package names on the command line", file=sys.stderr)
            return 1
        if "--exists" in modes:
            for name in names:
                find(name)
            return 0
        if "--modversion" in modes:
            for name in names:
                print(parse(find(name), defines)[1].get("version", ""))
            return 0
        if variable is not None:
            print(parse(find(names[0]), defines)[0].get(variable, ""))
            return 0
        cflags, libs = collect(names, static, defines, set())
        out = []
        if {"--cflags", "--cflags-only-I", "--cflags-only-other"} & modes:
            out += [f for f in unique(cflags)
                    if "--cflags" in modes or (f.startswith("-I") == ("--cflags-only-I" in modes))]
        if {"--libs", "--libs-only-l", "--libs-only-L", "--libs-only-other"} & modes:
            for flag in libs:
                keep = ("--libs" in modes or ("--libs-only-l" in modes and flag.startswith("-l"))
                        or ("--libs-only-L" in modes and flag.startswith("-L"))
                        or ("--libs-only-other" in modes and not flag.startswith(("-l", "-L"))))
                if keep:
                    out.append(flag)
        print(" ".join(out))
        return 0
    except Missing as e:
        if "--print-errors" in modes or "--exists" not in modes:
            print(f"Package {e} was not found in the pkg-config search path.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
