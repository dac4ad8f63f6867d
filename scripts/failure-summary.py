#!/usr/bin/env python3
"""Prints, for each failed test in a nextest JUnit report, the lines that say why it failed
(the error, the panic and its assertion), without backtraces: the end of a CI log is often
all that is read."""
import sys
import xml.etree.ElementTree as ET

KEYS = ("Error:", "panicked", "assertion", "left:", "right:", "Caused by", "never ", "timed out")
PER_TEST = 14


def reasons(text):
    lines = [l.rstrip() for l in text.splitlines()]
    out = []
    for i, line in enumerate(lines):
        if any(k in line for k in KEYS):
            for follow in lines[i : i + 4]:
                stripped = follow.strip()
                if stripped.lower().startswith(("at ", "stack backtrace")) or (
                    stripped[:1].isdigit() and ": " in stripped[:6]
                ):
                    break
                if not any(o.rstrip(":") == follow.rstrip(":") for o in out):
                    out.append(follow)
        if len(out) >= PER_TEST:
            break
    return [l[:300] for l in out[:PER_TEST]]


def main(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"no JUnit report at {path}: {e}")
        return
    print("\n=== why each test failed (from the JUnit report) ===")
    for case in root.iter("testcase"):
        failed = [c for c in case if c.tag in ("failure", "error")]
        if not failed:
            continue
        text = "\n".join(
            [(c.get("message") or "") + "\n" + (c.text or "") for c in failed]
            + [(c.text or "") for c in case if c.tag in ("system-out", "system-err")]
        )
        print(f"--- {case.get('classname')} {case.get('name')}")
        for line in reasons(text) or ["(no error line found)"]:
            print(f"    {line}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/nextest/default/junit.xml")
