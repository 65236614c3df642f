#!/usr/bin/env python3
"""Check the relative links and anchors of the repository's READMEs.

    python3 scripts/check-links.py [FILE.md ...]     (run by `make lint`)

Default files: README.md, benches/README.md, tests/README.md,
scripts/README.md. For every Markdown link or image `[text](target)` and
every HTML `src="..."`/`href="..."` outside code: a relative target must be
a file or directory inside the repository (no link may leave it), and an
anchor (`file.md#anchor`, `#anchor`) must name a heading of that Markdown
file, slugged as GitHub does. Absolute URLs (http:, https:, mailto:) are
not fetched. Prints one line per dead link and exits 1 if there is any.
Python standard library only.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["README.md", "benches/README.md", "tests/README.md", "scripts/README.md"]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def strip_inline_code(line):
    """The line with `code spans` blanked (links inside them are not links)."""
    return re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), line)


def slug(text):
    """GitHub's anchor for a heading: its rendered text, lower case, without
    punctuation other than '-' and '_', spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*|_)(\S.*?\S|\S)\1", r"\2", text)  # emphasis
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def lines_outside_code(path):
    """(line number, text) of each line outside fenced code blocks."""
    fenced = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if not fenced:
                yield n, line.rstrip("\n")


_anchors = {}


def anchors(path):
    """Every anchor a Markdown file defines: heading slugs (a repeated one
    gets -1, -2, … as on GitHub) and explicit id= / name= attributes."""
    if path not in _anchors:
        found, seen = set(), {}
        for _, line in lines_outside_code(path):
            m = HEADING.match(line)
            if m:
                s = slug(m.group(2))
                k = seen.get(s, 0)
                seen[s] = k + 1
                found.add(s if k == 0 else f"{s}-{k}")
            for a in re.findall(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""", line):
                found.add(a)
        _anchors[path] = found
    return _anchors[path]


def check(rel):
    path = os.path.join(ROOT, rel)
    problems = []
    for n, line in lines_outside_code(path):
        text = strip_inline_code(line)
        for target in LINK.findall(text) + HTML.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            if file_part:
                dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if os.path.commonpath([dest, ROOT]) != ROOT:
                    problems.append(f"{rel}:{n}: {target}: points outside the repository")
                    continue
                if not os.path.exists(dest):
                    problems.append(f"{rel}:{n}: {target}: no such file")
                    continue
            else:
                dest = path
            if anchor:
                if not dest.endswith(".md") or os.path.isdir(dest):
                    problems.append(f"{rel}:{n}: {target}: anchor into a file that is not Markdown")
                elif anchor not in anchors(dest):
                    problems.append(f"{rel}:{n}: {target}: no heading with anchor #{anchor} "
                                    f"in {os.path.relpath(dest, ROOT)}")
    return problems


def main():
    files = sys.argv[1:] or DEFAULT
    problems = []
    for rel in files:
        if not os.path.exists(os.path.join(ROOT, rel)):
            problems.append(f"{rel}: no such file")
            continue
        problems += check(rel)
    for p in problems:
        print(f"check-links: {p}", file=sys.stderr)
    if problems:
        print(f"check-links: {len(problems)} dead link(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
