#!/usr/bin/env python3
"""Turn callgrind profiles of a `ferry` binary into the linker's symbol ordering file.

usage: symbol-order.py BINARY CALLGRIND_OUT... > crates/ferry/link/symbol-order.txt
       symbol-order.py --check BINARY ORDER_FILE   (how much of the list BINARY still has)

Each profile must come from `valgrind --tool=callgrind --dump-instr=yes --compress-pos=no
--compress-strings=no` on BINARY itself. Every executed instruction is mapped to the function
symbol that holds it (`nm -S`); functions are written hottest first (instructions executed),
so the code a store runs all the time shares pages, and the code it runs once follows.
"""

import bisect
import collections
import os
import subprocess
import sys


def function_symbols(binary):
    out = subprocess.run(
        ["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True
    ).stdout
    symbols = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            symbols.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
    symbols.sort()
    return symbols


def executed(profile, binary):
    """(address, instructions) of each instruction of BINARY the profile saw run."""
    in_binary = False
    after_call = False
    with open(profile, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith("ob="):
                in_binary = line[3:].strip() == binary
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith("0x"):
                fields = line.split()
                # The line after `calls=` is the call instruction with the callee's whole cost.
                cost = 0 if after_call else int(fields[-1])
                after_call = False
                if in_binary:
                    yield int(fields[0], 16), cost


def check(binary, order_file):
    present = {name for _, _, name in function_symbols(binary)}
    with open(order_file, encoding="utf-8") as names:
        listed = [n.strip() for n in names if n.strip()]
    found = sum(1 for n in listed if n in present)
    print(f"symbol order: {found} of {len(listed)} listed functions are in {binary}")
    if found < len(listed) * 8 // 10:
        print(
            "symbol order: under four in five: regenerate it (scripts/symbol-order.sh), "
            "or the binary's idle memory grows",
            file=sys.stderr,
        )


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--check":
        check(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary = sys.argv[1]
    binary_path = os.path.realpath(binary)
    symbols = function_symbols(binary_path)
    starts = [s[0] for s in symbols]
    heat = collections.Counter()
    seen = unmapped = 0
    for profile in sys.argv[2:]:
        for address, cost in executed(profile, binary_path):
            seen += 1
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and address < symbols[i][0] + symbols[i][1]:
                heat[symbols[i][2]] += cost + 1
            else:
                unmapped += 1
    if seen == 0:
        sys.exit(f"no instruction of {binary_path} in the profiles: was it the profiled binary?")
    if unmapped > seen // 10:
        sys.exit(
            f"{unmapped} of {seen} executed addresses fall outside {binary_path}'s functions: "
            "the profiles are of another build"
        )
    for name, _ in sorted(heat.items(), key=lambda kv: (-kv[1], kv[0])):
        print(name)
    size = {name: length for _, length, name in symbols}
    print(
        f"{len(heat)} functions, {sum(size[n] for n in heat) / 1024:.0f} KiB of code "
        f"({unmapped} of {seen} addresses outside any function)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
