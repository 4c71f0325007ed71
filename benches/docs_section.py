"""Replaces one script-written section of a Markdown file (docs/performance.md).

A section is everything between a begin marker `<!-- section:NAME ... -->` (the `...` names
its owner and stays as written) and `<!-- /section:NAME -->`. The benchmark scripts import
this from their inline Python:

    sys.path.insert(0, os.path.join(root, "benches"))
    from docs_section import write_section
    write_section(os.path.join(root, "docs/performance.md"), "soak", body)
"""

import re
import sys


def replace_section(doc: str, name: str, body: str) -> str:
    """`doc` with section `name`'s content replaced by `body` (markers kept).

    Exits naming the section when its markers are missing or appear more than once, so a
    script never writes its figures somewhere else or nowhere.
    """
    pattern = re.compile(
        r"(<!-- section:" + re.escape(name) + r"(?: [^>]*)?-->)\n.*?(<!-- /section:" + re.escape(name) + r" -->)",
        re.S,
    )
    matches = pattern.findall(doc)
    if len(matches) != 1:
        sys.exit(f"docs: {len(matches)} pairs of section:{name} markers (need exactly one)")
    return pattern.sub(lambda m: m.group(1) + "\n" + body.strip("\n") + "\n" + m.group(2), doc)


def write_section(path: str, name: str, body: str) -> None:
    """Replaces section `name` of the file at `path` with `body` and says so on stderr."""
    with open(path) as f:
        doc = f.read()
    with open(path, "w") as f:
        f.write(replace_section(doc, name, body))
    print(f"wrote {path} (section:{name})", file=sys.stderr)
