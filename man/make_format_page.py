"""Writes zcwrap-format(5) from its template and docs/FORMAT.md.

Usage: make_format_page.py TEMPLATE FORMAT_MD OUTPUT

The blob header's table is written by hand in one place only: the fenced
block of FORMAT.md's section "1. Layout", from its "off  size  field" line
to the next numbered item ("2. Manifest"). The template holds the line
@LAYOUT_TABLE@ where that table goes, inside .nf/.fi; everything else in the
page is the template's. Standard library only: the build runs this with the
lane's Python (-Dpython), whatever else that interpreter has.
"""
import re
import sys

PLACEHOLDER = "@LAYOUT_TABLE@"
SECTION = "## 1. Layout"


def fail(message):
    sys.exit("make_format_page.py: " + message)


def layout_table(format_md, path):
    """The table's lines from FORMAT.md, as written there."""
    lines = format_md.splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        fail(f"{path}: no line '{SECTION}'")
    fence = [i for i in range(start + 1, len(lines)) if lines[i].startswith("```")]
    if len(fence) < 2:
        fail(f"{path}: no fenced block after '{SECTION}'")
    block = lines[fence[0] + 1:fence[1]]
    heads = [i for i, line in enumerate(block) if line.split() == ["off", "size", "field"]]
    if len(heads) != 1:
        fail(f"{path}: the block of '{SECTION}' has {len(heads)} lines 'off  size  field', not 1")
    table = []
    for line in block[heads[0]:]:
        if table and re.match(r"\s*\d+\.\s", line):
            break  # the next numbered item of the layout
        table.append(line.rstrip())
    rows = [line for line in table if re.match(r"\s*\d+\s+\d+\s+\w", line)]
    if not rows:
        fail(f"{path}: the header table of '{SECTION}' has no rows")
    return table


def roff_nofill(lines):
    """`lines` for a .nf block: dedented to one space of margin, escaped."""
    lines = [line.expandtabs() for line in lines]
    indent = min(len(line) - len(line.lstrip(" ")) for line in lines if line.strip())
    out = []
    for line in lines:
        text = line[indent:]
        # Backslash first, so the escapes added after it stay escapes; a
        # plain '-' is a hyphen to groff, and '\-' the minus the text means.
        text = text.replace("\\", "\\e").replace("-", "\\-")
        out.append(" " + text if text else "")
    return out


def main(argv):
    if len(argv) != 4:
        fail("usage: make_format_page.py TEMPLATE FORMAT_MD OUTPUT")
    template_path, format_path, output_path = argv[1:]
    with open(format_path, encoding="utf-8") as f:
        table = layout_table(f.read(), format_path)
    with open(template_path, encoding="utf-8") as f:
        template = f.read().splitlines()
    if template.count(PLACEHOLDER) != 1:
        fail(f"{template_path}: needs exactly one line '{PLACEHOLDER}', has {template.count(PLACEHOLDER)}")
    at = template.index(PLACEHOLDER)
    page = template[:at] + roff_nofill(table) + template[at + 1:]
    with open(output_path, "w", encoding="utf-8") as f:
        f.write("\n".join(page) + "\n")


if __name__ == "__main__":
    main(sys.argv)
