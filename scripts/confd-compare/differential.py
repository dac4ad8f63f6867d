#!/usr/bin/env python3
"""Differential test of `ferry render` against the real confd.

Generates random key trees and random confd templates (every confd template function
and most Go text/template constructs), renders each case with confd (etcdv3 backend)
and with `ferry render`, both reading ONE `ferry store` started for the whole run, and
compares the output file bytes (or their absence), the file mode and the exit codes.

    python3 scripts/confd-compare/differential.py --confd /work/tools/confd \
        --ferry /work/tools/ferry-snapshot --cases 300 --seed 1 \
        [--keep-failures DIR] [--batch 40] [--only 3,17] [--minimize]
    python3 scripts/confd-compare/differential.py --confd ... --ferry ... --replay DIR...

Case i is generated from random.Random(seed + i) and lives under its own key root
`/r<seed>_<i>x` (the trailing `x` keeps roots from being string prefixes of each other).
Well-formed cases are rendered in batches (one confd run and one ferry run per batch,
one template resource per case; both tools render every resource even when another
fails); cases meant to fail (~15%) and every case whose batch result cannot be attributed
(missing output with a non-zero batch exit code) are rendered alone, so each case has its
own exit codes.

With --keep-failures DIR every differing case is written to DIR/case-<seed>-<i>/:
keys.json ([key, value] pairs, absolute keys), template.tmpl, resource.toml (src is
"template.tmpl", dest is the placeholder "@DEST@"), confd.out (absent when confd wrote
no file), confd.rc, ferry.out/ferry.rc, confd.err/ferry.err and case.json (and, with
--minimize, template.min.tmpl). --replay runs such directories (or hand-written ones with
the same three input files) again, wiping the store before each, and compares again.

Diagnostics in each report: the "store view" probe renders, with both tools and the
case's prefix/keys, a template listing every key the resource sees (gets "/*", "/*/*",
...): it tells prefix/keys handling apart from template differences, and checks the
harness's own model of confd (which the generator uses to pick existing keys). "hints"
name the known difference a case probably shows; --avoid NAME,... (or all,-NAME) keeps
known differences out of the generated cases so that rarer ones show up. --minimize
drops top-level template chunks while the difference stays (one extra batch run per try).

Exit status: 0 when every case was identical, 1 when any differed, 2 on harness errors.
Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import difflib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# --------------------------------------------------------------------------------------
# Go semantics needed to predict what a template can safely reference
# --------------------------------------------------------------------------------------


def go_clean(p: str) -> str:
    """path.Clean."""
    if p == "":
        return "."
    rooted = p.startswith("/")
    out: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(seg)
    s = "/".join(out)
    if rooted:
        return "/" + s
    return s or "."


def go_join(*elems: str) -> str:
    """path.Join."""
    for i, e in enumerate(elems):
        if e != "":
            return go_clean("/".join(elems[i:]))
    return ""


def go_base(p: str) -> str:
    if p == "":
        return "."
    p = p.rstrip("/")
    if p == "":
        return "/"
    return p[p.rfind("/") + 1:]


def go_dir(p: str) -> str:
    return go_clean(p[: p.rfind("/") + 1])


def trim_prefix(s: str, prefix: str) -> str:
    return s[len(prefix):] if s.startswith(prefix) else s


def go_match(pat: str, name: str) -> bool:
    """path.Match for the patterns this generator writes (no escapes)."""
    rx = ""
    i = 0
    while i < len(pat):
        c = pat[i]
        if c == "*":
            rx += "[^/]*"
        elif c == "?":
            rx += "[^/]"
        elif c == "[":
            j = pat.index("]", i + 1)
            body = pat[i + 1: j]
            neg = body.startswith("^")
            if neg:
                body = body[1:]
            rx += "[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]"
            i = j
        else:
            rx += re.escape(c)
        i += 1
    return re.fullmatch(rx, name, re.S) is not None


def confd_view(kvs: dict[str, str], prefix: str, keys: list[str]) -> dict[str, str]:
    """The memkv store confd builds for a resource (backends/etcdv3 GetValues + setVars)."""
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    out: dict[str, str] = {}
    for k in keys:
        origin = go_join(prefix, k)
        fixed = origin if origin.endswith("/") else origin + "/"
        for key in sorted(kvs):
            if key == origin or key.startswith(fixed):
                out[go_join("/", trim_prefix(key, prefix))] = kvs[key]
    return out


def _terms(p: str) -> list[str]:
    return go_clean(p).split("/")


def _same_prefix(prefix: list[str], test: list[str]) -> bool:
    return len(test) >= len(prefix) and test[: len(prefix)] == prefix


class MemKV:
    """vendor/github.com/kelseyhightower/memkv, for predicting list lengths."""

    def __init__(self, m: dict[str, str]):
        self.m = m

    def ls(self, fp: str) -> list[str]:
        prefix = _terms(fp)
        s = set()
        for k in self.m:
            if k == fp:
                s.add(go_base(k))
                continue
            if _same_prefix(prefix, _terms(go_dir(k))):
                s.add(trim_prefix(trim_prefix(k, fp), "/").split("/")[0])
        return sorted(s)

    def lsdir(self, fp: str) -> list[str]:
        prefix = _terms(fp)
        s = set()
        for k in self.m:
            if k.startswith(fp):
                items = _terms(go_dir(k))
                if _same_prefix(prefix, items) and len(items) - len(prefix) >= 1:
                    s.add(items[len(prefix)])
        return sorted(s)

    def gets(self, pat: str) -> list[tuple[str, str]]:
        return [(k, self.m[k]) for k in sorted(self.m) if go_match(pat, k)]

    def getvs(self, pat: str) -> list[str]:
        return sorted(v for _, v in self.gets(pat))


PARSEBOOL = ["1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"]
INT64 = (-(2 ** 63), 2 ** 63 - 1)


def go_atoi(s) -> int | None:
    if not isinstance(s, str) or not re.fullmatch(r"[+-]?[0-9]+", s):
        return None
    v = int(s)
    return v if INT64[0] <= v <= INT64[1] else None


def wrap64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def go_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return wrap64(q if (a >= 0) == (b >= 0) else -q)


def go_mod(a: int, b: int) -> int:
    return wrap64(a - go_div(a, b) * b)


def b64_decode(s) -> str | None:
    if not isinstance(s, str) or len(s) % 4 or not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", s):
        return None
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


NOT_JSON = object()


def json_obj(s):
    """The value Go's json.Unmarshal gives (numbers as float), or NOT_JSON."""
    try:
        return json.loads(s, parse_int=float)
    except (ValueError, TypeError):
        return NOT_JSON


def is_ident(s: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s) is not None


def go_quote(rng: random.Random, s: str) -> str:
    """A Go string literal for s (interpreted, sometimes raw)."""
    if "`" not in s and "\r" not in s and rng.random() < 0.12:
        return "`" + s + "`"
    text = json.dumps(s, ensure_ascii=False)
    if rng.random() < 0.25:  # Go escapes for non-ASCII (no surrogate pairs in Go literals)
        text = "".join(ch if ord(ch) < 128 else ("\\u%04x" % ord(ch) if ord(ch) < 0x10000
                                                 else "\\U%08x" % ord(ch)) for ch in text)
    return text


def q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


# --------------------------------------------------------------------------------------
# Key trees
# --------------------------------------------------------------------------------------

FAMILIES = [
    ["db", "database", "databasebackup"],
    ["app", "apple", "app-1", "app_2"],
    ["a", "ab", "abc"],
    ["web", "web1", "web10"],
    ["up", "upstream"],
    ["host", "hosts"],
    ["svc", "service", "services"],
    ["1", "10", "2"],
    ["x", "x-y", "x_y"],
]
NAMES = ["port", "name", "cfg", "config", "json", "list", "v", "val", "value", "n", "z_z",
         "enabled", "ratio", "users", "nodes", "b64", "flag", "count", "empty", "path"]

# --avoid NAME: keep known differences out of the generated cases, to find the rarer ones
AVOIDABLE = {
    "kvpair": "never print a KVPair or a list of them (only .Key/.Value)",
    "float": "JSON numbers whose %v has no exponent (|x| < 1e6, no tiny fractions), no float literals",
    "lsroot": 'no ls/lsdir "/"',
    "strprefix": "no resource keys or prefix that are a partial path segment",
    "slashprefix": "no resource prefix with a trailing slash",
    "listverb": "printf applies only %v to lists and maps",
    "mutation": "reverse/sortByLength/sortKVByLength never get a variable",
    "datetime": "no datetime",
    "lenient": "no intended failures that ferry renders anyway (parse errors, wrong args, range over int, bad glob)",
    "typeverb": "no %T",
    "sharpv": "no %#v",
    "unicase": "no ß, ǅ, İ (Go maps case rune by rune)",
    "dirclean": "base/dir/ls/lsdir only get clean paths (but maybe a trailing slash)",
    "breakelse": "no {{break}}/{{continue}} in the {{else}} of a range nested in another range",
    "reversegets": "no reverse of gets' result (a memkv.KVPairs, which confd's reverse leaves alone)",
    "jsonnull": 'no json "null"',
    "badverb": "no printf verb applied to an argument of the wrong type",
}
AVOID: set[str] = set()
SAFE_NUM_TOKENS = ["0", "1", "-1", "2", "42", "100", "255", "123456", "-2.25", "1.5", "0.5", "0.1", "3.0"]
NUM_TOKENS = ["0", "1", "-1", "2", "42", "100", "255", "1000000", "12345678901", "-12345678901",
              "1e21", "1E+2", "1e6", "0.000001", "1e-7", "1.5", "-2.25", "3.0", "0.1",
              "123456789.123", "9007199254740993", "-0", "1e+300", "2.5e-5", "100000000000000000000",
              "1e20", "123456", "1234567", "0.5", "-1000000"]
JKEYS = ["name", "port", "ports", "host", "enabled", "ratio", "big", "neg", "nested", "list",
         "empty", "id", "a", "b", "Name", "x-y", "with space", "", "unicode", "value", "v2", "z"]
JSTRS = ["", "x", "svc", "10.0.0.1", "héllo", "☃", "日本語", 'a"b', "back\\slash", "line\nbreak",
         "<tag>&amp;", "true", "42", "with space", "🚀", "ß", "a,b", "/p/q"]
PLAIN_VALUES = ["10.0.0.1:80", "10.0.0.22:8080", "hello", "hello world", "true", "false", "1", "0",
                "42", "-7", "007", "+5", "3.14", "1e3", "a,b,c", ",", "x/y/z", "/etc/app.conf",
                "héllo wörld", "日本語", "emoji 🚀", "line1\nline2\n", "tab\there", 'quote "q"',
                "back\\slash", "aGVsbG8gd29ybGQ=", "YQ==", "w6k=", "12345678901", "9223372036854775807",
                "TRUE", "T", "yes", "  spaced  ", "<b>&amp;</b>", "percent %d %s", "{{not a template}}",
                "ß", "MiXeD", "abc", "a", "bb", "ccc", "{not json", "[1,2", "null", "{}", "[]",
                "\"quoted\"", "1000000", "1e21", "trailing-space ", "UPPER", "İ"]


def jgen(rng: random.Random, depth: int, kind: str | None = None):
    """Random JSON text and its decoded value (numbers as float, like Go's interface{})."""
    if kind is None:
        r = rng.random()
        if depth < 3 and r < 0.18:
            kind = "obj"
        elif depth < 3 and r < 0.30:
            kind = "arr"
        elif r < 0.62:
            kind = "num"
        elif r < 0.86:
            kind = "str"
        elif r < 0.96:
            kind = "bool"
        else:
            kind = "null"
    spaced = rng.random() < 0.4
    comma, colon = (", ", ": ") if spaced else (",", ":")
    if kind == "obj":
        ks = rng.sample(JKEYS, rng.randint(0 if depth else 1, 4))
        parts, val = [], {}
        for k in ks:
            t, v = jgen(rng, depth + 1)
            parts.append(json.dumps(k, ensure_ascii=False) + colon + t)
            val[k] = v
        return "{" + comma.join(parts) + "}", val
    if kind == "arr":
        n = rng.randint(0 if depth else 1, 4)
        sub = rng.choice([None, "num", "str"])
        parts, val = [], []
        for _ in range(n):
            t, v = jgen(rng, depth + 1, sub if depth >= 1 or rng.random() < 0.7 else None)
            parts.append(t)
            val.append(v)
        return "[" + comma.join(parts) + "]", val
    if kind == "num":
        tok = rng.choice(SAFE_NUM_TOKENS if "float" in AVOID else NUM_TOKENS)
        return tok, float(tok)
    if kind == "str":
        s = rng.choice(JSTRS)
        return json.dumps(s, ensure_ascii=rng.random() < 0.3), s
    if kind == "bool":
        b = rng.random() < 0.5
        return ("true" if b else "false"), b
    return "null", None


def gen_value(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.42:
        return rng.choice(PLAIN_VALUES)
    if r < 0.72:
        t, _ = jgen(rng, 0, "obj")
    elif r < 0.88:
        t, _ = jgen(rng, 0, "arr")
    else:
        return ""
    if rng.random() < 0.1:
        t = rng.choice([" ", "\n", "\t"]) + t + rng.choice(["", "\n", " "])
    return t


def pick_names(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        if rng.random() < 0.55:
            fam = rng.choice(FAMILIES)
            for name in rng.sample(fam, rng.randint(1, len(fam))):
                if name not in out:
                    out.append(name)
        else:
            name = rng.choice(NAMES)
            if name not in out:
                out.append(name)
    return out[: max(n, 1)] if len(out) > n + 2 else out


def gen_tree(rng: random.Random, root: str) -> dict[str, str]:
    kvs: dict[str, str] = {}
    budget = [rng.randint(5, 28)]

    def node(path: str, depth: int):
        if budget[0] <= 0:
            return
        if depth >= 4 or rng.random() < 0.42:
            kvs[path] = gen_value(rng)
            budget[0] -= 1
            return
        if rng.random() < 0.12:  # a key that is also a directory
            kvs[path] = gen_value(rng)
            budget[0] -= 1
        for name in pick_names(rng, rng.randint(1, 4)):
            node(path + "/" + name, depth + 1)

    if rng.random() < 0.1:
        kvs[root] = gen_value(rng)
    for name in pick_names(rng, rng.randint(1, 4)):
        node(root + "/" + name, 1)
    if not kvs:
        kvs[root + "/name"] = "fallback"
    return kvs


# --------------------------------------------------------------------------------------
# Template generator
# --------------------------------------------------------------------------------------

UNK = object()  # unknown value

STR_LITS = ["", "x", "hello", "Hello World", "a,b,c", "a,,b", ",", "/", "/a/b", "a/b/", "//x//y/",
            "10.0.0.1:80", "héllo", "日本", "🚀", "tab\tsep", "line\nbreak", 'quo"te', "back\\slash",
            "%d", "UPPER", "MiXeD", "aaa", "abcabc", "  pad  ", "true", "42", "-7", "0x1F",
            "<a href='x'>&</a>", "ß", "ǅ", "İ", "a.conf", "file.conf.bak", "x y z", "é"]
PATHISH = ["", "/", "/a/b/c", "a/b/", "//x//y/", "/a/b/../c", "./a", "a", ".", "/x.conf", "dir/"]
TEXTS = ["", "", " ", " ", ", ", "; ", " = ", ": ", "|", "é", "\t", "[", "]", "# ", "\n"]
ENV = {"FERRY_CMP_ENV": "from-env", "FERRY_CMP_EMPTY": "", "FERRY_CMP_UNI": "héllo ☃"}


class E:
    """A template expression: text, Go-ish type and (when known) its value."""
    __slots__ = ("text", "typ", "val", "atomic")

    def __init__(self, text: str, typ: str, val=UNK, atomic: bool = False):
        self.text, self.typ, self.val, self.atomic = text, typ, val, atomic

    def arg(self) -> str:
        return self.text if self.atomic else "(" + self.text + ")"


def jtyp(v) -> str:
    if isinstance(v, dict):
        return "obj"
    if isinstance(v, list):
        return "arr"
    if isinstance(v, str):
        return "str"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, float):
        return "num"
    return "nil"


LIST_TYPES = ("strs", "kvs", "kvsu", "ints", "obj", "arr", "mapx")
KV_TYPES = ("kv", "kvs", "kvsu")
PRINT_TYPES = [("str", 10), ("int", 5), ("bool", 4), ("strs", 5), ("kvs", 3), ("kvsu", 1), ("kv", 4),
               ("ints", 2), ("obj", 4), ("arr", 3), ("mapx", 2), ("jleaf", 6)]
MAX_EXPR = 3
MAX_BLOCK = 2


class TemplateGen:
    def __init__(self, rng: random.Random, view: dict[str, str]):
        self.r = rng
        self.view = view
        self.kv = MemKV(view)
        self.keys = sorted(view)
        dirs = {"/"}
        for k in self.keys:
            d = go_dir(k)
            while d not in dirs:
                dirs.add(d)
                d = go_dir(d)
        self.dirs = sorted(dirs)
        self.obj_keys = [k for k in self.keys if isinstance(json_obj(view[k]), dict)]
        self.arr_keys = [k for k in self.keys if isinstance(json_obj(view[k]), list)]
        self.int_keys = [k for k in self.keys if go_atoi(view[k]) is not None]
        self.bool_keys = [k for k in self.keys if view[k] in PARSEBOOL]
        self.b64_keys = [k for k in self.keys if b64_decode(view[k]) is not None]
        self.scopes: list[dict[str, E]] = [{}]
        self.nvar = 0
        self.dot = E(".", "nil", None, True)
        self.in_range = 0
        self.defines: list[str] = []
        self.no_vars = False  # set while generating the argument of an in-place sort

    # ---- helpers ------------------------------------------------------------------
    @staticmethod
    def cw(w: float, d: int) -> float:
        """Weight of a production that nests further expressions, at depth d."""
        return 0 if d >= MAX_EXPR else w * 0.35 ** d

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def choose(self, opts, *a):
        """Weighted choice among productions; the first that applies wins."""
        opts = [(w, f) for w, f in opts if w > 0]
        while opts:
            total = sum(w for w, _ in opts)
            x = self.r.random() * total
            for idx, (w, f) in enumerate(opts):
                x -= w
                if x <= 0:
                    break
            e = opts[idx][1](*a)
            if e is not None:
                return e
            opts.pop(idx)
        return None

    def lit(self, s: str) -> E:
        return E(go_quote(self.r, s), "str", s, True)

    def vars_of(self, typ: str | None = None, known: bool = False) -> list[tuple[str, E]]:
        seen: dict[str, E] = {}
        for sc in self.scopes:
            seen.update(sc)
        return [(n, e) for n, e in sorted(seen.items())
                if (typ is None or e.typ == typ) and (not known or e.val is not UNK)]

    def var_expr(self, typ: str, known: bool = False) -> E | None:
        if self.no_vars:
            return None
        vs = self.vars_of(typ, known)
        if not vs:
            return None
        n, e = self.r.choice(vs)
        return E(n, e.typ, e.val, True)

    def new_var(self) -> str:
        self.nvar += 1
        return "$v%d" % self.nvar

    def existing_key(self) -> str | None:
        return self.r.choice(self.keys) if self.keys else None

    def missing_key(self) -> str:
        r = self.r.random()
        k = self.existing_key() or "/none"
        if r < 0.25:
            cand = "/nope"
        elif r < 0.45:
            cand = k + self.r.choice(["x", "base", "-1"])
        elif r < 0.6:
            cand = k[:-1] if len(k) > 2 else "/n"
        elif r < 0.7:
            cand = k + "/"
        elif r < 0.8:
            cand = k[1:] or "k"
        elif r < 0.9:
            cand = self.r.choice(self.dirs)
        else:
            cand = k + "/sub"
        if cand in self.view:
            cand = cand + "/zz"
        return cand

    def any_key(self) -> str:
        return self.existing_key() if self.keys and self.chance(0.6) else self.missing_key()

    def dir_arg(self) -> str:
        for _ in range(10):
            d = self._dir_arg()
            if "dirclean" in AVOID and d != "/" and go_clean(d) != d.rstrip("/"):
                continue
            if not ("lsroot" in AVOID and d == "/"):
                return d
        return "/nope"

    def _dir_arg(self) -> str:
        r = self.r.random()
        if r < 0.55 or not self.keys:
            return self.r.choice(self.dirs)
        if r < 0.65:
            d = self.r.choice(self.dirs)
            return d if d == "/" else d + "/"
        if r < 0.78:
            return self.r.choice(self.keys)
        if r < 0.88:
            d = self.r.choice(self.dirs)
            return d[:-1] if len(d) > 2 else "/"
        return self.missing_key()

    def pattern(self) -> str:
        d = self.r.choice(self.dirs)
        base = "" if d == "/" else d
        r = self.r.random()
        if r < 0.45:
            return base + "/*"
        if r < 0.6:
            return base + "/*/*"
        if r < 0.7 and self.keys:
            name = go_base(self.r.choice(self.keys))
            return base + "/" + name[:1] + "*"
        if r < 0.78 and self.keys:
            return "/*/" + go_base(self.r.choice(self.keys))
        if r < 0.84:
            return base + "/?*"
        if r < 0.9:
            return base + "/[a-m]*"
        if r < 0.95 and self.keys:
            return self.r.choice(self.keys)
        return self.r.choice(["*", "/*", "/nope/*", base + "/[^a]*"])

    # ---- json sources ---------------------------------------------------------------
    def json_sources(self) -> list[E]:
        out = [E(n, e.typ, e.val, True) for n, e in self.vars_of() if e.typ in ("obj", "arr")
               and e.val is not UNK]
        for k in self.obj_keys:
            out.append(E("json (getv %s)" % q(k), "obj", json_obj(self.view[k])))
        for k in self.arr_keys:
            out.append(E("jsonArray (getv %s)" % q(k), "arr", json_obj(self.view[k])))
        if self.dot.typ in ("obj", "arr") and self.dot.val is not UNK:
            out.append(self.dot)
        return out

    def j_leaf(self, want: str | None) -> E | None:
        """index SRC k1 k2 ... (or $v.field) reaching a JSON value of type want."""
        srcs = self.json_sources()
        self.r.shuffle(srcs)
        for src in srcs[:4]:
            paths = []

            def walk(v, path):
                if path and (want is None or jtyp(v) == want):
                    paths.append((path, v))
                if len(path) < 3:
                    if isinstance(v, dict):
                        for k in sorted(v):
                            walk(v[k], path + [k])
                    elif isinstance(v, list):
                        for i, x in enumerate(v):
                            walk(x, path + [i])

            walk(src.val, [])
            if want in (None, "nil") and isinstance(src.val, dict) and self.chance(0.3):
                paths.append((["missing"], None))  # a missing map key: the zero value
            if not paths:
                continue
            path, v = self.r.choice(paths)
            if (src.atomic and src.text.startswith("$") and all(isinstance(p, str) and is_ident(p)
                                                                for p in path) and self.chance(0.5)):
                return E(src.text + "".join("." + p for p in path), jtyp(v), v, True)
            if (src.text == "." and all(isinstance(p, str) and is_ident(p) for p in path)
                    and self.chance(0.5)):
                return E("".join("." + p for p in path), jtyp(v), v, True)
            args = " ".join(q(p) if isinstance(p, str) else str(p) for p in path)
            if self.chance(0.3) and len(path) > 1:  # nested index calls
                text = src.arg()
                for p in path:
                    text = "(index %s %s)" % (text, q(p) if isinstance(p, str) else str(p))
                return E(text[1:-1], jtyp(v), v)
            return E("index %s %s" % (src.arg(), args), jtyp(v), v)
        return None

    # ---- expressions -----------------------------------------------------------------
    def g(self, typ: str, d: int = 0) -> E:
        if typ == "kv" and not self.keys and self.dot.typ != "kv" and not self.vars_of("kv"):
            typ = "str"  # no key to get
        fn = {
            "str": self.g_str, "int": self.g_int, "bool": self.g_bool, "strs": self.g_strs,
            "kvs": self.g_kvs, "kvsu": self.g_kvsu, "kv": self.g_kv, "ints": self.g_ints,
            "obj": self.g_obj, "arr": self.g_arr, "mapx": self.g_mapx,
            "jleaf": lambda d: self.j_leaf(None) or self.g_str(d),
        }[typ]
        e = fn(d)
        assert e is not None, typ
        return e

    def g_str(self, d: int) -> E:
        return self.choose([
            (6, self.s_lit), (10, self.s_getv), (5, self.s_getv_def), (3, self.s_get_field),
            (self.cw(2, d), self.s_base_dir), (self.cw(3, d), self.s_case),
            (self.cw(2, d), self.s_replace), (self.cw(2, d), self.s_trimsuffix),
            (self.cw(2, d), self.s_b64enc), (self.cw(2, d), self.s_b64dec),
            (self.cw(3, d), self.s_join), (2, self.s_getenv), (self.cw(3, d), self.s_printf),
            (self.cw(1, d), self.s_print), (4, self.s_var), (self.cw(2, d), self.s_index_strs),
            (3, self.s_json), (self.cw(1, d), self.s_or), (self.cw(1, d), self.s_escape),
            (3, self.s_dot), (self.cw(1, d), self.s_slice),
            (0 if "datetime" in AVOID else 0.3, self.s_datetime),
        ], d) or self.s_lit(d)

    def s_lit(self, d):
        return self.lit(self.r.choice(STR_LITS))

    def s_getv(self, d):
        k = self.existing_key()
        if k is None:
            return None
        return E("getv %s" % q(k), "str", self.view[k])

    def s_getv_def(self, d):
        k = self.any_key()
        dflt = self.r.choice(["dflt", "", "x y", "héllo"])
        return E("getv %s %s" % (q(k), go_quote(self.r, dflt)), "str", self.view.get(k, dflt))

    def s_get_field(self, d):
        k = self.existing_key()
        if k is None:
            return None
        if self.chance(0.5):
            return E('(get %s).Value' % q(k), "str", self.view[k], True)
        return E('(get %s).Key' % q(k), "str", k, True)

    def s_base_dir(self, d):
        fn = self.r.choice(["base", "dir"])
        if self.chance(0.5):
            s = self.lit(self.r.choice(PATHISH + self.keys[:3]))
        else:
            s = self.g_str(d + 1)
        val = UNK
        if isinstance(s.val, str):
            val = go_base(s.val) if fn == "base" else go_dir(s.val)
        return E("%s %s" % (fn, s.arg()), "str", val)

    def s_case(self, d):
        fn = self.r.choice(["toUpper", "toLower"])
        s = self.g_str(d + 1)
        val = UNK
        if isinstance(s.val, str) and s.val.isascii():
            val = s.val.upper() if fn == "toUpper" else s.val.lower()
        return E("%s %s" % (fn, s.arg()), "str", val)

    def s_replace(self, d):
        s = self.g_str(d + 1)
        if isinstance(s.val, str) and s.val and self.chance(0.7):
            i = self.r.randrange(len(s.val))
            old = s.val[i: i + self.r.randint(1, 2)]
        else:
            old = self.r.choice(["a", "-", ",", "", "/", "x"])
        new = self.r.choice(["+", "", "__", "é", "-"])
        n = self.r.choice([-1, -1, 0, 1, 2])
        val = UNK
        if isinstance(s.val, str):
            val = s.val.replace(old, new, n) if n >= 0 else s.val.replace(old, new)
        return E("replace %s %s %s %d" % (s.arg(), q(old), q(new), n), "str", val)

    def s_trimsuffix(self, d):
        s = self.g_str(d + 1)
        if isinstance(s.val, str) and s.val and self.chance(0.6):
            suf = s.val[-self.r.randint(1, min(3, len(s.val))):]
        else:
            suf = self.r.choice([".conf", "/", "", "x", ".bak"])
        val = UNK
        if isinstance(s.val, str):
            val = s.val[: len(s.val) - len(suf)] if suf and s.val.endswith(suf) else s.val
        return E("trimSuffix %s %s" % (s.arg(), q(suf)), "str", val)

    def s_b64enc(self, d):
        s = self.g_str(d + 1)
        val = base64.b64encode(s.val.encode()).decode() if isinstance(s.val, str) else UNK
        return E("base64Encode %s" % s.arg(), "str", val)

    def s_b64dec(self, d):
        r = self.r.random()
        if r < 0.4:
            inner = self.s_b64enc(d + 1)
            if inner.val is UNK:
                return None
        elif r < 0.7 and self.b64_keys:
            k = self.r.choice(self.b64_keys)
            inner = E("getv %s" % q(k), "str", self.view[k])
        else:
            inner = self.lit(self.r.choice(["aGVsbG8=", "", "w6k=", "8J+agA==", "YQ==", "YWJj"]))
        val = b64_decode(inner.val)
        if val is None:
            return None
        return E("base64Decode %s" % inner.arg(), "str", val)

    def s_join(self, d):
        lst = self.g_strs(d + 1)
        sep = self.r.choice([",", ", ", "", "\n", " | ", "é"])
        val = sep.join(lst.val) if isinstance(lst.val, list) else UNK
        return E("join %s %s" % (lst.arg(), go_quote(self.r, sep)), "str", val)

    def s_getenv(self, d):
        name = self.r.choice(list(ENV) + ["FERRY_CMP_UNSET"])
        if self.chance(0.5):
            dflt = self.r.choice(["dflt", "", "x"])
            v = ENV.get(name, "") or dflt
            return E("getenv %s %s" % (q(name), q(dflt)), "str", v)
        return E("getenv %s" % q(name), "str", ENV.get(name, ""))

    VERBS = {  # verb: (argument types, or None for any; weight)
        "%v": (None, 5), "%s": (("str", "strs"), 4), "%d": (("int", "ints"), 4),
        "%q": (("str", "strs"), 3), "%5v": (None, 2), "%-5s": (("str",), 2), "%x": (("str", "int"), 2),
        "%t": (("bool",), 1), "%05d": (("int",), 1), "%.2f": (("jnum",), 1), "%g": (("jnum",), 1),
        "%+v": (None, 1), "%#v": (("str", "int", "strs"), 0.5), "%X": (("str",), 0.5),
        "%8.3s": (("str",), 1), "%T": (None, 0.3), "%%": ((), 0.5),
    }

    def verbs(self) -> dict:
        return {k: v for k, v in self.VERBS.items()
                if not (k == "%T" and "typeverb" in AVOID or k == "%#v" and "sharpv" in AVOID)}

    def printf_args(self, d, nmax=3) -> tuple[str, list[E]]:
        fmt, args = "", []
        for _ in range(self.r.randint(1, nmax)):
            verbs = self.verbs()
            verb = self.r.choices(list(verbs), [w for _, w in verbs.values()])[0]
            types = verbs[verb][0]
            fmt += self.r.choice(["", "", " ", "=", "[", "-", "é"]) + verb
            if types == ():
                continue
            if types is None or (self.chance(0.08) and "badverb" not in AVOID):
                typ = self.print_type()
            else:
                typ = self.r.choice(types)
            if "listverb" in AVOID and typ in LIST_TYPES + ("kvs", "kvsu", "jleaf") and verb != "%v":
                fmt = fmt[: -len(verb)] + "%v"
            if typ == "jnum":
                e = self.j_leaf("num")
                if e is None and "badverb" in AVOID:
                    fmt = fmt[: -len(verb)] + "%v"
                e = e or self.g_int(d + 1)
            else:
                e = self.g(typ, d + 1)
            args.append(e)
        if self.chance(0.2):
            fmt += self.r.choice(["\n", "]", " end"])
        return fmt, args

    def s_printf(self, d):
        fmt, args = self.printf_args(d)
        return E(" ".join(["printf", go_quote(self.r, fmt)] + [a.arg() for a in args]), "str")

    def s_print(self, d):
        fn = self.r.choice(["print", "println"])
        args = [self.g(self.r.choice(["str", "int", "bool", "strs", "jleaf"]), d + 1)
                for _ in range(self.r.randint(1, 3))]
        return E(" ".join([fn] + [a.arg() for a in args]), "str")

    def s_var(self, d):
        return self.var_expr("str")

    def s_index_strs(self, d):
        lst = self.g_strs(d + 1)
        if not isinstance(lst.val, list) or not lst.val:
            return None
        i = self.r.randrange(len(lst.val))
        return E("index %s %d" % (lst.arg(), i), "str", lst.val[i])

    def s_json(self, d):
        return self.j_leaf("str")

    def s_or(self, d):
        a, b = self.g_str(d + 1), self.g_str(d + 1)
        fn = self.r.choice(["or", "and"])
        val = UNK
        if isinstance(a.val, str) and isinstance(b.val, str):
            val = (a.val or b.val) if fn == "or" else (b.val if a.val else a.val)
        return E("%s %s %s" % (fn, a.arg(), b.arg()), "str", val)

    def s_escape(self, d):
        fn = self.r.choice(["html", "js", "urlquery"])
        return E("%s %s" % (fn, self.g_str(d + 1).arg()), "str")

    def s_dot(self, d):
        if self.dot.typ == "str":
            return self.dot
        if self.dot.typ == "kv":
            f = self.r.choice(["Key", "Value"])
            return E("." + f, "str", UNK, True)
        return None

    def s_slice(self, d):
        s = self.g_str(d + 1)
        if not isinstance(s.val, str) or not s.val.isascii():
            return None
        n = len(s.val)
        i = self.r.randint(0, n)
        j = self.r.randint(i, n)
        return E("slice %s %d %d" % (s.arg(), i, j), "str", s.val[i:j])

    def s_datetime(self, d):
        return E('(datetime).Format "2006"', "str")

    INT_LITS = [("0", 0), ("1", 1), ("2", 2), ("3", 3), ("5", 5), ("7", 7), ("10", 10), ("-1", -1),
                ("-3", -3), ("100", 100), ("12345678901", 12345678901), ("0x10", 16),
                ("'a'", 97), ("0b101", 5), ("0o17", 15), ("1_000", 1000), ("-0x1", -1)]
    # float-looking constants are ints only where a parameter is typed int (add, seq, ...):
    # eq/lt/printf receive them as float64
    FLOAT_INT_LITS = [("1.0", 1), ("1e2", 100), ("2.0", 2)]

    def g_int(self, d: int) -> E:
        return self.choose([
            (5, self.i_lit), (self.cw(5, d), self.i_arith), (self.cw(3, d), self.i_atoi),
            (self.cw(3, d), self.i_len), (3, self.i_var), (2, self.i_dot),
            (self.cw(1, d), self.i_index_ints),
        ], d) or self.i_lit(d)

    def i_lit(self, d):
        lits = self.INT_LITS if self.chance(0.3) else self.INT_LITS[:11]
        t, v = self.r.choice(lits)
        return E(t, "int", v, True)

    def i_arith(self, d):
        fn = self.r.choice(["add", "sub", "mul", "div", "mod"])
        a = self.g_int(d + 1)
        if fn in ("div", "mod"):
            bv = self.r.choice([1, 2, 3, 7, -2, 10])
            b = E(str(bv), "int", bv, True)
        elif self.chance(0.1):
            t, v = self.r.choice(self.FLOAT_INT_LITS)
            b = E(t, "int", v, True)
        else:
            b = self.g_int(d + 1)
        val = UNK
        if isinstance(a.val, int) and isinstance(b.val, int):
            val = {"add": lambda: wrap64(a.val + b.val), "sub": lambda: wrap64(a.val - b.val),
                   "mul": lambda: wrap64(a.val * b.val), "div": lambda: go_div(a.val, b.val),
                   "mod": lambda: go_mod(a.val, b.val)}[fn]()
        return E("%s %s %s" % (fn, a.arg(), b.arg()), "int", val)

    def i_atoi(self, d):
        r = self.r.random()
        if r < 0.4 and self.int_keys:
            k = self.r.choice(self.int_keys)
            s = E("getv %s" % q(k), "str", self.view[k])
        elif r < 0.6:
            i = self.g_int(d + 1)
            s = E('printf "%%d" %s' % i.arg(), "str", str(i.val) if isinstance(i.val, int) else UNK)
            if s.val is UNK:
                return None
        else:
            s = self.lit(self.r.choice(["42", "-7", "007", "+5", "0", "12345678901", "9223372036854775807"]))
        v = go_atoi(s.val)
        if v is None:
            return None
        return E("atoi %s" % s.arg(), "int", v)

    def i_len(self, d):
        typ = self.r.choice(["str", "strs", "kvs", "ints", "obj", "arr", "mapx"])
        x = self.g(typ, d + 1)
        val = UNK
        if isinstance(x.val, str):
            val = len(x.val.encode())
        elif isinstance(x.val, (list, dict)):
            val = len(x.val)
        return E("len %s" % x.arg(), "int", val)

    def i_var(self, d):
        return self.var_expr("int")

    def i_dot(self, d):
        return self.dot if self.dot.typ == "int" else None

    def i_index_ints(self, d):
        lst = self.g_ints(d + 1)
        if not isinstance(lst.val, list) or not lst.val:
            return None
        i = self.r.randrange(len(lst.val))
        return E("index %s %d" % (lst.arg(), i), "int", lst.val[i])

    def g_bool(self, d: int) -> E:
        return self.choose([
            (2, self.b_lit), (5, self.b_exists), (self.cw(3, d), self.b_contains),
            (2, self.b_parsebool), (self.cw(5, d), self.b_eq), (self.cw(4, d), self.b_cmp),
            (self.cw(3, d), self.b_logic), (2, self.b_fileexists), (2, self.b_var),
            (1, lambda d: self.j_leaf("bool")), (1, lambda d: self.dot if self.dot.typ == "bool" else None),
        ], d) or self.b_lit(d)

    def b_lit(self, d):
        return E(self.r.choice(["true", "false"]), "bool", UNK, True)

    def b_exists(self, d):
        return E("exists %s" % q(self.any_key()), "bool")

    def b_contains(self, d):
        a = self.g_str(d + 1)
        if isinstance(a.val, str) and a.val and self.chance(0.5):
            i = self.r.randrange(len(a.val))
            b = self.lit(a.val[i: i + 2])
        else:
            b = self.g_str(d + 1)
        return E("contains %s %s" % (a.arg(), b.arg()), "bool")

    def b_parsebool(self, d):
        if self.bool_keys and self.chance(0.4):
            k = self.r.choice(self.bool_keys)
            return E("parseBool (getv %s)" % q(k), "bool")
        return E("parseBool %s" % q(self.r.choice(PARSEBOOL)), "bool")

    def b_eq(self, d):
        fn = self.r.choice(["eq", "ne"])
        typ = self.r.choice(["str", "str", "int", "int", "bool", "jnum"])
        if typ == "jnum":
            a = self.j_leaf("num")
            b = self.j_leaf("num")
            if a is None or b is None:
                return None
        else:
            a, b = self.g(typ, d + 1), self.g(typ, d + 1)
        args = [a, b]
        if fn == "eq" and typ != "jnum" and self.chance(0.2):
            args.append(self.g(typ, d + 1))
        return E(" ".join([fn] + [x.arg() for x in args]), "bool")

    def b_cmp(self, d):
        fn = self.r.choice(["lt", "le", "gt", "ge"])
        typ = self.r.choice(["int", "int", "str"])
        return E("%s %s %s" % (fn, self.g(typ, d + 1).arg(), self.g(typ, d + 1).arg()), "bool")

    def b_logic(self, d):
        fn = self.r.choice(["and", "or", "not", "not"])
        if fn == "not":
            return E("not %s" % self.g_bool(d + 1).arg(), "bool")
        args = [self.g_bool(d + 1) for _ in range(self.r.randint(2, 3))]
        return E(" ".join([fn] + [a.arg() for a in args]), "bool")

    def b_fileexists(self, d):
        return E("fileExists %s" % q(self.r.choice(["/etc/passwd", "/nonexistent/x", "conf.d", "nope",
                                                    "/", ""])), "bool")

    def b_var(self, d):
        return self.var_expr("bool")

    def g_strs(self, d: int) -> E:
        return self.choose([
            (4, self.l_split), (5, self.l_getvs), (4, self.l_ls), (self.cw(2, d), self.l_sortbylen),
            (self.cw(2, d), self.l_reverse), (1, self.l_lookup), (4, self.l_var),
            (1, lambda d: self.dot if self.dot.typ == "strs" else None),
        ], d) or self.l_getvs(d)

    def l_split(self, d):
        s = self.g_str(d + 1) if d < MAX_EXPR and self.chance(0.6) else self.lit(
            self.r.choice(["a,b,c", "a,,b", "", ",", "x", "ccc,a,bb,dd", "héllo,wörld"]))
        sep = self.r.choice([",", ",", "/", ".", "", "ll", ":"])
        val = UNK
        if isinstance(s.val, str):
            val = list(s.val) if sep == "" else s.val.split(sep)
        return E("split %s %s" % (s.arg(), q(sep)), "strs", val)

    def l_getvs(self, d):
        p = self.pattern()
        return E("getvs %s" % q(p), "strs", self.kv.getvs(p))

    def l_ls(self, d):
        fn = self.r.choice(["ls", "lsdir"])
        p = self.dir_arg()
        return E("%s %s" % (fn, q(p)), "strs", self.kv.ls(p) if fn == "ls" else self.kv.lsdir(p))

    def inner(self, fn, d):
        """The argument of an in-place sort (no variables with --avoid mutation)."""
        self.no_vars = "mutation" in AVOID
        try:
            return fn(d + 1)
        finally:
            self.no_vars = False

    def l_sortbylen(self, d):
        x = self.inner(self.g_strs, d)
        val = sorted(x.val, key=len) if isinstance(x.val, list) else UNK
        return E("sortByLength %s" % x.arg(), "strs", val)

    def l_reverse(self, d):
        x = self.inner(self.g_strs, d)
        val = list(reversed(x.val)) if isinstance(x.val, list) else UNK
        return E("reverse %s" % x.arg(), "strs", val)

    def l_lookup(self, d):
        return E('lookupIPV4 "localhost"', "strs")

    def l_var(self, d):
        return self.var_expr("strs")

    def g_kvs(self, d: int) -> E:
        r = self.r.random()
        if r < 0.25:
            v = self.var_expr("kvs")
            if v:
                return v
        if r < 0.35 and d < MAX_EXPR and "reversegets" not in AVOID:
            x = self.inner(self.g_kvs, d)
            return E("reverse %s" % x.arg(), "kvs", x.val)  # a no-op on memkv.KVPairs
        p = self.pattern()
        return E("gets %s" % q(p), "kvs", self.kv.gets(p))

    def g_kvsu(self, d: int) -> E:
        r = self.r.random()
        if r < 0.25:
            v = self.var_expr("kvsu")
            if v:
                return v
        if r < 0.45 and d < MAX_EXPR:
            x = self.inner(self.g_kvsu, d)
            return E("reverse %s" % x.arg(), "kvsu",
                     list(reversed(x.val)) if isinstance(x.val, list) else UNK)
        x = self.inner(self.g_kvs, d)
        val = sorted(x.val, key=lambda kv: len(kv[0])) if isinstance(x.val, list) else UNK
        return E("sortKVByLength %s" % x.arg(), "kvsu", val)

    def g_kv(self, d: int) -> E:
        r = self.r.random()
        if r < 0.2:
            v = self.var_expr("kv")
            if v:
                return v
        if r < 0.3 and self.dot.typ == "kv":
            return self.dot
        if r < 0.45 and d < MAX_EXPR:
            x = self.g_kvs(d + 1) if self.chance(0.6) else self.g_kvsu(d + 1)
            if isinstance(x.val, list) and x.val:
                i = self.r.randrange(len(x.val))
                return E("index %s %d" % (x.arg(), i), "kv", x.val[i])
        k = self.existing_key()
        if k is None:
            return E("get %s" % q("/x"), "kv")  # not reached: views are never empty when asked
        return E("get %s" % q(k), "kv", (k, self.view[k]))

    def g_ints(self, d: int) -> E:
        v = self.var_expr("ints") if self.chance(0.2) else None
        if v:
            return v
        a = self.r.randint(-2, 4)
        b = self.r.randint(a - 1, a + 5)
        if self.chance(0.2) and d < MAX_EXPR:
            x = self.g_int(d + 1)
            if isinstance(x.val, int) and -3 <= x.val <= 12:
                return E("seq %d %s" % (a, x.arg()), "ints", list(range(a, x.val + 1)))
        return E("seq %d %d" % (a, b), "ints", list(range(a, b + 1)))

    def json_lit(self, kind: str) -> E:
        text, val = jgen(self.r, 0, kind)
        return E("%s %s" % ("json" if kind == "obj" else "jsonArray", go_quote(self.r, text)), kind, val)

    def g_obj(self, d: int) -> E:
        r = self.r.random()
        if r < 0.25:
            v = self.var_expr("obj", known=True)
            if v:
                return v
        if r < 0.8 and self.obj_keys:
            k = self.r.choice(self.obj_keys)
            return E("json (getv %s)" % q(k), "obj", json_obj(self.view[k]))
        if r < 0.9:
            leaf = self.j_leaf("obj")
            if leaf:
                return leaf
        if 0.9 <= r < 0.91 and "jsonnull" not in AVOID:
            return E('json "null"', "obj", {})  # a nil map, no error
        return self.json_lit("obj")

    def g_arr(self, d: int) -> E:
        r = self.r.random()
        if r < 0.25:
            v = self.var_expr("arr", known=True)
            if v:
                return v
        if r < 0.7 and self.arr_keys:
            k = self.r.choice(self.arr_keys)
            return E("jsonArray (getv %s)" % q(k), "arr", json_obj(self.view[k]))
        if r < 0.85:
            leaf = self.j_leaf("arr")
            if leaf:
                return leaf
        return self.json_lit("arr")

    def g_mapx(self, d: int) -> E:
        v = self.var_expr("mapx") if self.chance(0.3) else None
        if v:
            return v
        names = self.r.sample(["a", "b", "name", "port", "k1", "k2", "Z"], self.r.randint(1, 3))
        parts, val = [], {}
        for n in names:
            typ = self.r.choice(["str", "int", "bool", "strs"]) if d < MAX_EXPR else "str"
            e = self.g(typ, d + 1) if d < MAX_EXPR else self.s_lit(d)
            parts += [q(n), e.arg()]
            val[n] = e
        return E("map " + " ".join(parts), "mapx", val)

    # ---- statements -----------------------------------------------------------------
    def act(self, inner: str) -> str:
        left = "{{- " if self.chance(0.1) else "{{"
        right = " -}}" if self.chance(0.1) else "}}"
        return left + inner + right

    def print_type(self) -> str:
        types = [(t, w) for t, w in PRINT_TYPES if not ("kvpair" in AVOID and t in KV_TYPES)]
        return self.r.choices([t for t, _ in types], [w for _, w in types])[0]

    def stmt(self, d: int) -> str:
        return self.choose([
            (30, self.st_print), (8, self.st_printf), (7, self.st_pipe), (8, self.st_assign),
            (3, self.st_reassign), (0 if d >= MAX_BLOCK else 9, self.st_if),
            (0 if d >= MAX_BLOCK else 11, self.st_range), (0 if d >= MAX_BLOCK else 6, self.st_with),
            (2, self.st_comment), (2 if self.in_range else 0, self.st_break),
            (1.5 if d == 0 else 0, self.st_define), (3 if self.defines else 0, self.st_template),
            (0.5, self.st_dollar), (0 if "mutation" in AVOID else 2, self.st_mutate),
        ], d)

    def block(self, d: int) -> str:
        self.scopes.append({})
        parts = []
        for _ in range(self.r.randint(1, 2)):
            parts.append(self.r.choice(TEXTS) + self.stmt(d))
        parts.append(self.r.choice(TEXTS))
        self.scopes.pop()
        return "".join(parts)

    def st_print(self, d):
        if self.chance(0.05):
            t, _ = self.r.choice(self.INT_LITS + ([] if "float" in AVOID else
                                                  [("1.5", 0), ("1e21", 0), ("-0.0", 0), ("1e6", 0)]))
            return self.act(t)
        e = self.g(self.print_type())
        return self.act(e.text)

    def st_printf(self, d):
        return self.act(self.s_printf(0).text)

    PIPES = {
        "str": [("toUpper", "str"), ("toLower", "str"), ("base", "str"), ("dir", "str"),
                ("base64Encode", "str"), ('printf "%q"', "str"), ('printf "<%s>"', "str"),
                ('trimSuffix ".conf"', "str"), ('contains "a"', "bool"), ("len", "int"),
                ("html", "str"), ("urlquery", "str"), ("js", "str"), ("print", "str"),
                ('split "a,b,c"', "strs"), ('printf "%s|%v" "x"', "str")],
        "int": [("add 1", "int"), ('printf "%d"', "str"), ("mul 3", "int"),
                ('replace "aaaa" "a" "b"', "str")],
        "strs": [("sortByLength", "strs"), ("reverse", "strs"), ("len", "int"),
                 ('printf "%v"', "str")],
        "kvs": [("sortKVByLength", "kvsu"), ("reverse", "kvs"), ("len", "int")],  # see st_pipe
        "kvsu": [("reverse", "kvsu"), ("len", "int"), ('printf "%v"', "str")],
        "bool": [("not", "bool"), ('printf "%t"', "str"), ("and true", "bool"), ("or false", "bool")],
        "ints": [("len", "int"), ('printf "%v"', "str")],
        "obj": [("len", "int"), ('printf "%v"', "str")],
        "arr": [("len", "int"), ('printf "%v"', "str")],
        "mapx": [("len", "int")],
        "kv": [('printf "%v"', "str"), ("print", "str")],
    }

    def st_pipe(self, d):
        typ = self.r.choice([t for t in self.PIPES if not ("kvpair" in AVOID and t in KV_TYPES)])
        self.no_vars = "mutation" in AVOID  # `$v | reverse` sorts $v in place
        e = self.g(typ)
        self.no_vars = False
        text = e.text
        for n in range(self.r.randint(1, 3)):
            if typ not in self.PIPES:
                break
            stages = self.PIPES[typ]
            if n == 0 and typ == "int" and isinstance(e.val, int) and -3 <= e.val <= 12:
                stages = stages + [("seq 1", "ints")]  # only small known bounds: seq allocates
            if "kvpair" in AVOID:
                stages = [(st, t) for st, t in stages if t not in KV_TYPES] or [("len", "int")]
            if "reversegets" in AVOID and typ == "kvs":
                stages = [(st, t) for st, t in stages if st != "reverse"]
            stage, typ = self.r.choice(stages)
            text += " | " + stage
        if self.chance(0.2):
            name = self.new_var()
            self.scopes[-1][name] = E(name, typ, UNK, True)
            return self.act("%s := %s" % (name, text)) + self.act(name)
        return self.act(text)

    def st_assign(self, d):
        typ = self.r.choice(["str", "str", "int", "bool", "strs", "strs", "kvs", "kvsu", "obj", "obj",
                             "arr", "mapx", "ints", "kv"])
        e = self.g(typ)
        name = self.new_var()
        self.scopes[-1][name] = E(name, e.typ, e.val, True)
        out = self.act("%s := %s" % (name, e.text))
        if self.chance(0.4) and not ("kvpair" in AVOID and e.typ in KV_TYPES):
            out += self.act(name)
        return out

    def st_reassign(self, d):
        vs = [(n, e) for n, e in self.vars_of() if e.typ in ("str", "int", "bool", "strs", "kvs", "obj")
              and n.startswith("$v")]
        if not vs:
            return None
        n, old = self.r.choice(vs)
        scope = next(sc for sc in reversed(self.scopes) if n in sc)
        if scope is not self.scopes[-1]:
            # set in a nested block (maybe a loop): its value is unknown from here on, also
            # to the expression that replaces it (a loop runs it again on its own result)
            scope[n] = E(n, old.typ, UNK, True)
        e = self.g(old.typ)
        scope[n] = E(n, old.typ, e.val if scope is self.scopes[-1] else UNK, True)
        out = self.act("%s = %s" % (n, e.text))
        if self.chance(0.5) and not ("kvpair" in AVOID and e.typ in KV_TYPES):
            out += self.act(n)
        return out

    def cond(self, d) -> str:
        if self.chance(0.7):
            return self.g_bool(d).text
        return self.g(self.print_type(), d).text

    def st_if(self, d):
        out = self.act("if " + self.cond(0)) + self.block(d + 1)
        for _ in range(self.r.choice([0, 0, 1, 2])):
            out += self.act("else if " + self.cond(0)) + self.block(d + 1)
        if self.chance(0.5):
            out += self.act("else") + self.block(d + 1)
        return out + self.act("end")

    def elem_types(self, coll: E) -> tuple[str, E]:
        if coll.typ == "strs":
            return "int", E(".", "str", UNK, True)
        if coll.typ in ("kvs", "kvsu"):
            return "int", E(".", "kv", UNK, True)
        if coll.typ == "ints":
            return "int", E(".", "int", UNK, True)
        if coll.typ == "mapx":
            return "str", E(".", "any", UNK, True)
        vals = list(coll.val.values()) if isinstance(coll.val, dict) else (
            coll.val if isinstance(coll.val, list) else [])
        typs = {jtyp(v) for v in vals}
        t = typs.pop() if len(typs) == 1 else "any"
        if t in ("obj", "arr"):
            t = "any"  # nested values: only printed
        return ("str" if coll.typ == "obj" else "int"), E(".", t, UNK, True)

    def st_range(self, d):
        typ = self.r.choice(["strs", "strs", "kvs", "kvsu", "ints", "obj", "arr", "mapx"])
        coll = self.g(typ)
        ityp, elem = self.elem_types(coll)
        saved_dot = self.dot
        self.scopes.append({})
        form = self.r.random()
        if form < 0.5:
            i, v = self.new_var(), self.new_var()
            head = "range %s, %s := %s" % (i, v, coll.text)
            self.scopes[-1][i] = E(i, ityp, UNK, True)
            self.scopes[-1][v] = E(v, elem.typ, UNK, True)
        elif form < 0.7:
            v = self.new_var()
            head = "range %s := %s" % (v, coll.text)
            self.scopes[-1][v] = E(v, elem.typ, UNK, True)
        else:
            head = "range " + coll.text
        self.dot = elem
        self.in_range += 1
        body = self.block(d + 1)
        self.in_range -= 1
        self.dot = saved_dot
        self.scopes.pop()
        out = self.act(head) + body
        if self.chance(0.3):
            saved_range = self.in_range
            if "breakelse" in AVOID:
                self.in_range = 0
            out += self.act("else") + self.block(d + 1)
            self.in_range = saved_range
        return out + self.act("end")

    def st_with(self, d):
        e = self.g(self.print_type())
        saved = self.dot
        self.scopes.append({})
        if self.chance(0.3):
            v = self.new_var()
            head = "with %s := %s" % (v, e.text)
            self.scopes[-1][v] = E(v, e.typ, e.val, True)
        else:
            head = "with " + e.text
        self.dot = E(".", e.typ, e.val, True)
        body = self.block(d + 1)
        self.dot = saved
        self.scopes.pop()
        out = self.act(head) + body
        if self.chance(0.4):
            out += self.act("else") + self.block(d + 1)
        return out + self.act("end")

    def st_comment(self, d):
        if self.chance(0.5):
            return "{{/* a comment */}}"
        return "{{- /* trimmed comment */ -}}"

    def st_break(self, d):
        kw = self.r.choice(["break", "continue"])
        return self.act("if " + self.g_bool(0).text) + self.act(kw) + self.act("end")

    def st_define(self, d):
        name = "blk%d" % (len(self.defines) + 1)
        self.defines.append(name)
        body = self.r.choice(["[{{.}}]", "<{{printf \"%v\" .}}>", "{{with .}}w:{{.}}{{else}}empty{{end}}",
                              "{{len .}}", "{{range .}}({{.}}){{end}}"])
        # len and range need a container: remember which blocks take which
        kind = "coll" if ("len" in body or "range" in body) else "any"
        self.defines[-1] = name + ":" + kind
        if self.chance(0.3):
            arg = self.g("strs") if kind == "coll" else self.g(self.print_type())
            return '{{block "%s" %s}}%s{{end}}' % (name, arg.arg(), body)
        return '{{define "%s"}}%s{{end}}' % (name, body)

    def st_template(self, d):
        name, kind = self.r.choice(self.defines).split(":")
        arg = self.g(self.r.choice(["strs", "ints", "obj", "arr"])) if kind == "coll" else self.g(
            self.print_type())
        return self.act('template "%s" %s' % (name, arg.text))

    def st_mutate(self, d):
        """reverse/sortByLength/sortKVByLength sort their argument in place: print it again."""
        typ = self.r.choice(["strs"] if "kvpair" in AVOID else ["strs", "strs", "kvsu", "kvs"])
        fn = {"strs": ["reverse", "sortByLength"], "kvsu": ["reverse", "sortKVByLength"],
              "kvs": ["sortKVByLength"] if "reversegets" in AVOID else ["reverse", "sortKVByLength"]}[typ]
        name = self.new_var()
        e = {"strs": self.g_strs, "kvs": self.g_kvs, "kvsu": self.g_kvsu}[typ](1)
        self.scopes[-1][name] = E(name, e.typ, UNK, True)
        out = self.act("%s := %s" % (name, e.text))
        out += self.act("%s %s" % (self.r.choice(fn), name)) if self.chance(0.5) else self.act(
            "%s := %s %s" % (self.new_var(), self.r.choice(fn), name))
        return out + self.r.choice([" ", ""]) + self.act(name)

    def st_dollar(self, d):
        if "kvpair" in AVOID and self.dot.typ in KV_TYPES:
            return None
        return self.act(self.r.choice(["$", ".", "print nil", "printf \"%v\" nil"]))

    def template(self) -> list[str]:
        chunks = []
        if self.chance(0.3):
            chunks.append(self.r.choice(["# generated\n", "[section]\n", "{{/* header */ -}}\n"]))
        for n in range(self.r.randint(3, 10)):
            label = self.r.choice(["", "", "k%d: " % n, "k%d = " % n, "- "])
            chunks.append(label + self.stmt(0) + self.r.choice(["\n", "\n", "\n", " ", ""]))
        return chunks


FAIL_KINDS = ["undef_func", "getv_missing", "bad_json", "check_false", "atoi_bad", "index_oob",
              "parse_unclosed", "parse_extra_end", "div_zero", "map_odd", "wrong_arg_type",
              "base64_bad", "parsebool_bad", "undef_var", "missing_src", "range_int", "eq_mixed",
              "field_on_str", "too_many_args", "json_array_of_object", "gets_bad_pattern"]


# the intended failures `ferry render` (snapshot of 2026-11) renders anyway
LENIENT_KINDS = {"parse_unclosed", "parse_extra_end", "too_many_args", "wrong_arg_type", "range_int",
                 "gets_bad_pattern"}


def fail_chunk(kind: str, gen: TemplateGen) -> str | None:
    plain = [k for k in gen.keys if json_obj(gen.view[k]) is NOT_JSON]
    return {
        "undef_func": '{{nosuchfunc "x"}}',
        "getv_missing": "{{getv %s}}" % q(gen.missing_key()),
        "bad_json": ("{{json (getv %s)}}" % q(plain[0])) if plain else '{{json "not json"}}',
        "atoi_bad": '{{atoi "12a"}}',
        "index_oob": '{{index (split "a,b" ",") 5}}',
        "parse_unclosed": "{{if true}}unclosed",
        "parse_extra_end": "{{end}}",
        "div_zero": "{{div 1 0}}",
        "map_odd": '{{map "a"}}',
        "wrong_arg_type": '{{add "1" 2}}',
        "base64_bad": '{{base64Decode "***"}}',
        "parsebool_bad": '{{parseBool "yes"}}',
        "undef_var": "{{$nope}}",
        "range_int": "{{range 3}}x{{end}}",
        "eq_mixed": '{{eq 1 "1"}}',
        "field_on_str": "{{(getv %s).Foo}}" % q(gen.keys[0]) if gen.keys else '{{"x".Foo}}',
        "too_many_args": '{{toUpper "a" "b"}}',
        "json_array_of_object": '{{jsonArray "{\\"a\\":1}"}}',
        "gets_bad_pattern": '{{gets "/["}}' if gen.keys else '{{nosuchfunc "x"}}',  # no keys: no match call
    }.get(kind)


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------

class Case:
    def __init__(self, seed: int, idx: int):
        self.seed, self.idx = seed, idx
        rng = random.Random(seed + idx)
        self.root = "/r%d_%dx" % (seed, idx)
        self.kvs = gen_tree(rng, self.root)
        self.gen_resource(rng)
        self.view = confd_view(self.kvs, self.prefix, self.keys)
        kinds = [k for k in FAIL_KINDS if not ("lenient" in AVOID and k in LENIENT_KINDS)]
        self.fail_kind = rng.choice(kinds) if rng.random() < 0.15 else None
        gen = TemplateGen(rng, self.view)
        self.chunks = gen.template()
        self.src_name = "c%d.tmpl" % idx
        if self.fail_kind == "check_false":
            self.check_cmd = "false"
        elif self.fail_kind == "missing_src":
            self.src_name = "missing-%d.tmpl" % idx
        elif self.fail_kind:
            self.chunks.insert(rng.randint(0, len(self.chunks)), fail_chunk(self.fail_kind, gen) + "\n")

    @property
    def template(self) -> str:
        return "".join(self.chunks)

    def gen_resource(self, rng: random.Random):
        root = self.root
        tops = sorted({k[len(root) + 1:].split("/")[0] for k in self.kvs if k != root})
        top = rng.choice(tops) if tops else "name"

        def ambiguous(path: str) -> bool:
            """Some other key has path as a plain string prefix (like /db for /database)."""
            path = path.rstrip("/")
            return any(k.startswith(path) and k != path and not k.startswith(path + "/") for k in self.kvs)

        if "strprefix" in AVOID and ambiguous(root + "/" + top):
            ok = [t for t in tops if not ambiguous(root + "/" + t)]
            top = rng.choice(ok) if ok else None
        self.omit_prefix = False
        r = rng.random()
        if "strprefix" in AVOID and (0.85 <= r < 0.92 or (top is None and 0.48 <= r < 0.78)):
            r = 0
        if r < 0.38:
            prefix = root
        elif r < 0.48:
            prefix = root + ("" if "slashprefix" in AVOID else "/")
        elif r < 0.68:
            prefix = root + "/" + top + ("/" if rng.random() < 0.3 and "slashprefix" not in AVOID else "")
        elif r < 0.78:
            prefix = rng.choice(["", "/"])
            self.omit_prefix = prefix == "" and rng.random() < 0.5
        elif r < 0.85:
            prefix = root[1:]
        elif r < 0.92:
            prefix = root + "/" + (top[:-1] if len(top) > 1 else top)
        else:
            prefix = root
        self.prefix = prefix
        absolute = prefix in ("", "/")
        base = root if absolute else ""
        if rng.random() < 0.5 and not absolute:
            keys = ["/"]
        else:
            partial = [] if "strprefix" in AVOID else ["/" + t[:2] for t in tops]
            t0 = top or "name"
            cands = ["/" + t for t in tops] + partial + ["/nonexistent", t0, "", "/" + t0 + "/"]
            deeper = sorted({"/" + "/".join(k[len(root) + 1:].split("/")[:2]) for k in self.kvs
                             if k.count("/") >= 3})
            cands += deeper
            if "strprefix" in AVOID:
                full_prefix = "/" + prefix.lstrip("/")
                cands = [c for c in cands if not ambiguous(go_join(full_prefix, base + "/" + c.lstrip("/")))]
            if not cands:
                cands = ["/"]
            keys = [base + c if c.startswith("/") or c == "" else base + "/" + c
                    for c in rng.sample(cands, min(len(cands), rng.randint(1, 3)))]
            if absolute and rng.random() < 0.3:
                keys.append(root)
            if not absolute and rng.random() < 0.15:
                keys.append("/")
        self.keys = keys
        self.check_cmd = None
        self.reload_cmd = None
        self.mode = None
        r = rng.random()
        if r < 0.05:
            self.check_cmd = "test -f {{.src}}"
        elif r < 0.08:
            self.reload_cmd = "true"
        elif r < 0.12:
            self.mode = "0600"

    def resource_toml(self, src: str, dest: str, commands: bool = True) -> str:
        lines = ["[template]", "src = %s" % json.dumps(src), "dest = %s" % json.dumps(dest)]
        if not self.omit_prefix:
            lines.append("prefix = %s" % json.dumps(self.prefix))
        lines.append("keys = [%s]" % ", ".join(json.dumps(k) for k in self.keys))
        if self.check_cmd and commands:
            lines.append("check_cmd = %s" % json.dumps(self.check_cmd))
        if self.reload_cmd and commands:
            lines.append("reload_cmd = %s" % json.dumps(self.reload_cmd))
        if self.mode:
            lines.append("mode = %s" % json.dumps(self.mode))
        return "\n".join(lines) + "\n"


class ReplayCase(Case):
    """A case read back from a --keep-failures directory."""

    def __init__(self, path: str, idx: int):  # noqa: super().__init__ is deliberately not called
        self.path, self.idx, self.seed = path, idx, 0
        with open(os.path.join(path, "keys.json"), encoding="utf-8") as f:
            self.kvs = {k: v for k, v in json.load(f)}
        with open(os.path.join(path, "template.tmpl"), encoding="utf-8") as f:
            self.chunks = [f.read()]
        with open(os.path.join(path, "resource.toml"), encoding="utf-8") as f:
            self.toml = f.read()
        self.fail_kind = "replay"
        self.src_name = "c%d.tmpl" % idx
        self.root = None
        self.prefix, self.keys, self.check_cmd = "?", [], None

    def resource_toml(self, src: str, dest: str, commands: bool = True) -> str:
        text = self.toml
        if not commands:
            text = re.sub(r"(?m)^(check_cmd|reload_cmd)\s*=.*\n", "", text)
            text = re.sub(r'(?m)^src\s*=.*$', "src = %s" % json.dumps(src), text)
        return text.replace('"template.tmpl"', json.dumps(src)).replace("@DEST@", dest)


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(s: str) -> str:
    return base64.b64encode(s.encode("utf-8")).decode()


class Store:
    def __init__(self, ferry: str, work: str):
        self.port = free_port()
        peer = free_port()
        while peer == self.port:
            peer = free_port()
        url = "http://127.0.0.1:%d" % self.port
        self.log = open(os.path.join(work, "store.log"), "wb")
        self.proc = subprocess.Popen(
            [ferry, "store", "--data-dir", os.path.join(work, "store-data"), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env())
        self.conn: http.client.HTTPConnection | None = None
        env = dict(os.environ, ETCDCTL_API="3")
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                self.log.flush()
                with open(self.log.name, "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError("ferry store exited with %s:\n%s" % (self.proc.returncode, tail))
            r = subprocess.run(["etcdctl", "--endpoints=127.0.0.1:%d" % self.port, "--dial-timeout=1s",
                                "--command-timeout=2s", "endpoint", "health"],
                               env=env, capture_output=True)
            if r.returncode == 0:
                break
            if time.time() > deadline:
                raise RuntimeError("ferry store not healthy: %s" % r.stderr.decode(errors="replace"))
            time.sleep(0.1)

    def post(self, path: str, body: dict) -> dict:
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError("%s -> HTTP %d: %s" % (path, resp.status, data[:300]))
                return json.loads(data)
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError

    def put_all(self, kvs: dict[str, str]):
        items = sorted(kvs.items())
        for i in range(0, len(items), 100):
            ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in items[i: i + 100]]
            r = self.post("/v3/kv/txn", {"success": ops})
            if not r.get("succeeded"):
                raise RuntimeError("txn failed: %r" % r)

    def get_prefix(self, key: str, end: str) -> dict[str, str]:
        r = self.post("/v3/kv/range", {"key": b64(key), "range_end": b64(end)})
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                for kv in r.get("kvs", [])}

    def wipe(self):
        self.post("/v3/kv/deleterange", {"key": b64("\0"), "range_end": b64("\0")})

    def stop(self):
        if self.conn:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FERRY", "CONFD", "ETCD", "RUST_LOG"))}
    env["NO_COLOR"] = "1"
    return env


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

class Result:
    __slots__ = ("out", "mode", "rc", "err")

    def __init__(self, out, mode, rc, err):
        self.out, self.mode, self.rc, self.err = out, mode, rc, err


# Lists every key a template resource sees (its memkv store), at any depth up to 8.
PROBE = "".join('{{range gets "%s"}}{{.Key}} {{base64Encode .Value}}\n{{end}}' % ("/*" * n) for n in range(1, 9))


def parse_probe(out) -> dict[str, str] | None:
    if out is None:
        return None
    view = {}
    for line in out.decode("utf-8", errors="replace").splitlines():
        k, _, v = line.rpartition(" ")
        view[k] = base64.b64decode(v).decode("utf-8", errors="replace")
    return view


def render(args, store: Store, cases: list[Case], work: str, tag: str,
           probe: bool = False) -> tuple[dict, dict, int, int]:
    """One confd run and one ferry run over all cases (one resource each), concurrently.
    With probe, each case's resource renders PROBE instead of its template."""
    base = os.path.join(work, tag)
    env = clean_env()
    env.update(ENV)
    procs = {}
    for tool in ("confd", "ferry"):
        d = os.path.join(base, tool)
        for sub in ("conf.d", "templates", "out"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        for c in cases:
            src = "p%d.tmpl" % c.idx if probe else c.src_name
            if probe or c.src_name.startswith("c"):
                with open(os.path.join(d, "templates", src), "w", encoding="utf-8") as f:
                    f.write(PROBE if probe else c.template)
            with open(os.path.join(d, "conf.d", "c%d.toml" % c.idx), "w", encoding="utf-8") as f:
                f.write(c.resource_toml(src, os.path.join(d, "out", "c%d" % c.idx), commands=not probe))
        if tool == "confd":
            cmd = [args.confd, "-onetime", "-backend", "etcdv3", "-node", "http://127.0.0.1:%d" % store.port,
                   "-confdir", d, "-log-level", "error"]
        else:
            cmd = [args.ferry, "render", "-onetime", "-backend", "etcdv3", "-node",
                   "127.0.0.1:%d" % store.port, "-confdir", d, "-log-level", "error"]
        procs[tool] = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rcs, errs = {}, {}
    for tool, p in procs.items():
        try:
            out, err = p.communicate(timeout=args.timeout)
            rcs[tool] = p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            rcs[tool] = "timeout"
        errs[tool] = (out + err).decode("utf-8", errors="replace")
    res = {"confd": {}, "ferry": {}}
    for tool in ("confd", "ferry"):
        for c in cases:
            path = os.path.join(base, tool, "out", "c%d" % c.idx)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                mode = oct(os.stat(path).st_mode & 0o7777)
            except FileNotFoundError:
                data, mode = None, None
            res[tool][c.idx] = Result(data, mode, rcs[tool], errs[tool])
    if not args.keep_work:
        shutil.rmtree(base, ignore_errors=True)
    return res["confd"], res["ferry"], rcs["confd"], rcs["ferry"]


def run_cases(args, store: Store, cases: list[Case], work: str, tag: str) -> dict[int, tuple[Result, Result]]:
    """Per-case (confd, ferry) results with per-case exit codes."""
    results: dict[int, tuple[Result, Result]] = {}
    batchable = [c for c in cases if not c.fail_kind]
    single = [c for c in cases if c.fail_kind]
    if batchable:
        rc_, rf_, rcc, rcf = render(args, store, batchable, work, tag)
        if rcc == 0 and rcf == 0:
            for c in batchable:
                results[c.idx] = (rc_[c.idx], rf_[c.idx])
        else:
            miss_c = [c for c in batchable if rc_[c.idx].out is None]
            miss_f = [c for c in batchable if rf_[c.idx].out is None]
            if (rcc != 0 and not miss_c) or (rcf != 0 and not miss_f):
                single += batchable  # a failure we cannot attribute: run each alone
            else:
                redo = {c.idx for c in miss_c + miss_f}
                for c in batchable:
                    if c.idx in redo:
                        single.append(c)
                    else:
                        a, b = rc_[c.idx], rf_[c.idx]
                        results[c.idx] = (Result(a.out, a.mode, 0, ""), Result(b.out, b.mode, 0, ""))
    for c in single:
        a, b, _, _ = render(args, store, [c], work, "%s-c%d" % (tag, c.idx))
        results[c.idx] = (a[c.idx], b[c.idx])
    return results


def probe_views(args, store: Store, cases: list[Case], work: str, tag: str) -> dict[int, tuple]:
    """The key/value set each tool gives each case's resource (None: the probe failed)."""
    pa, pb, _, _ = render(args, store, cases, work, tag + "-probe", probe=True)
    return {c.idx: (parse_probe(pa[c.idx].out), parse_probe(pb[c.idx].out)) for c in cases}


def view_report(cv, fv) -> list[str]:
    if cv == fv:
        return ["store view: identical (%d keys)" % len(cv)] if cv is not None else []
    if cv is None or fv is None:
        return ["store view: the probe failed with %s" % ("confd" if cv is None else "ferry")]
    out = ["store view DIFFERS (the keys the resource sees, after prefix stripping):"]
    for k in sorted(set(cv) | set(fv)):
        if k not in fv:
            out.append("    only confd: %s = %r" % (k, cv[k]))
        elif k not in cv:
            out.append("    only ferry: %s = %r" % (k, fv[k]))
        elif cv[k] != fv[k]:
            out.append("    %s: confd %r, ferry %r" % (k, cv[k], fv[k]))
    return out[:25]


def differs(a: Result, b: Result) -> bool:
    return a.out != b.out or a.rc != b.rc or (a.out is not None and b.out is not None and a.mode != b.mode)


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------

def show_bytes(data) -> str:
    if data is None:
        return "(no file)"
    return data.decode("utf-8", errors="backslashreplace")


def clip(text: str, n: int) -> str:
    lines = text.splitlines()
    if len(lines) > n:
        return "\n".join(lines[:n] + ["... (%d more lines)" % (len(lines) - n)])
    return text


def indent(text: str, pre: str = "    ") -> str:
    return "\n".join(pre + line for line in text.split("\n"))


def case_report(c: Case, a: Result, b: Result, views=None) -> str:
    out = ["=" * 78, "case %d (seed %d, rng seed %d)%s DIFFERS" % (
        c.idx, c.seed, c.seed + c.idx, " [intended failure: %s]" % c.fail_kind if c.fail_kind else "")]
    if isinstance(c, ReplayCase):
        out[-1] = "replay %s DIFFERS" % c.path
        out.append("resource:\n" + indent(c.toml.rstrip()))
    else:
        out.append("resource: prefix=%r%s keys=%r%s%s" % (
            c.prefix, " (omitted)" if c.omit_prefix else "", c.keys,
            " check_cmd=%r" % c.check_cmd if c.check_cmd else "",
            " mode=%s" % c.mode if c.mode else ""))
    out.append("keys:")
    for k in sorted(c.kvs):
        out.append("    %s = %r" % (k, c.kvs[k]))
    if views:
        out += view_report(*views)
    out.append("hints (heuristic, see --avoid): %s" % (" ".join(hints(c, a, b, views)) or "-"))
    out.append("template:")
    out.append(indent(clip(c.template, 60)))
    out.append("confd: rc=%s %s   ferry: rc=%s %s" % (
        a.rc, "no file" if a.out is None else "%d bytes mode %s" % (len(a.out), a.mode),
        b.rc, "no file" if b.out is None else "%d bytes mode %s" % (len(b.out), b.mode)))
    if a.out is not None and b.out is not None and a.out != b.out:
        ta, tb = show_bytes(a.out), show_bytes(b.out)
        diff = list(difflib.unified_diff(ta.splitlines(keepends=True), tb.splitlines(keepends=True),
                                         "confd", "ferry", n=1))
        text = "".join(d if d.endswith("\n") else d + "\n\\ no newline\n" for d in diff)
        out.append(clip(text.rstrip("\n"), 50))
        if len(ta) < 400 and len(tb) < 400:
            out.append("confd: %r" % ta)
            out.append("ferry: %r" % tb)
    else:
        for name, r in (("confd", a), ("ferry", b)):
            if r.out is not None:
                out.append("%s output: %s" % (name, clip(repr(show_bytes(r.out)), 20)))
    for name, r in (("confd", a), ("ferry", b)):
        if r.err.strip() and (r.rc != 0):
            out.append("%s stderr: %s" % (name, clip(re.sub(r"\x1b\[[0-9;]*m", "", r.err.strip()), 6)))
    return "\n".join(out)


EXPONENT = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?e[+-]\d+")


def hints(c: Case, a: Result, b: Result, views) -> list[str]:
    """Heuristic guesses at which known difference a case shows (see --avoid)."""
    h = []
    co = a.out.decode("utf-8", "replace") if a.out is not None else ""
    fo = b.out.decode("utf-8", "replace") if b.out is not None else ""
    t = c.template
    if views and views[0] is not None and views[1] is not None and views[0] != views[1]:
        if set(views[1]) - set(views[0]) - {"/"}:
            h.append("strprefix")
        if set(views[0]) - set(views[1]):
            h.append("slashprefix")
    if a.rc != 0 and b.rc == 0:
        h.append("lenient")
    if a.rc == 0 and b.rc != 0:
        h.append("datetime" if "non-function" in b.err else "jsonnull" if "not a JSON object" in b.err
                 else "slashprefix" if "key does not exist" in b.err and "slashprefix" in h else "ferry-fails")
    if "map[Key:" in fo and "map[Key:" not in co:
        h.append("kvpair")
    if any(e not in fo for e in EXPONENT.findall(co)):
        h.append("float")
    if re.search(r"%!\w\((list|map)=", fo) and not re.search(r"%!\w\((list|map)=", co):
        h.append("listverb")
    if len(re.findall(r"%!\w\(\w+=", co)) > len(re.findall(r"%!\w\(\w+=", fo)):
        h.append("badverb")
    for name, rx in (("lsroot", r'\b(ls|lsdir) "/"'), ("mutation", r"(reverse|sortByLength|sortKVByLength) \$v\d"),
                     ("typeverb", r"%T"), ("sharpv", r"%#v"),
                     ("reversegets", r'reverse \(gets|gets "[^"]*" \| reverse')):
        if re.search(rx, t) and name not in h:
            h.append(name + "?")
    if re.search(r"toUpper|toLower", t) and re.search("[ßǅİ]", t + co):
        h.append("unicase?")
    if any(go_clean(p) != p.rstrip("/") and p not in ("", "/")
           for p in re.findall(r'\b(?:dir|base|ls|lsdir) "([^"]*)"', t)):
        h.append("dirclean?")
    return h


def keep_case(dirname: str, c: Case, a: Result, b: Result, reduced: list[str] | None = None):
    shutil.rmtree(dirname, ignore_errors=True)
    os.makedirs(dirname)
    with open(os.path.join(dirname, "keys.json"), "w", encoding="utf-8") as f:
        json.dump([[k, c.kvs[k]] for k in sorted(c.kvs)], f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(dirname, "template.tmpl"), "w", encoding="utf-8") as f:
        f.write(c.template)
    with open(os.path.join(dirname, "resource.toml"), "w", encoding="utf-8") as f:
        f.write(c.resource_toml("template.tmpl" if c.src_name.startswith("c") else "missing.tmpl", "@DEST@"))
    if reduced is not None:
        with open(os.path.join(dirname, "template.min.tmpl"), "w", encoding="utf-8") as f:
            f.write("".join(reduced))
    for name, r in (("confd", a), ("ferry", b)):
        path = os.path.join(dirname, name + ".out")
        if r.out is not None:
            with open(path, "wb") as f:
                f.write(r.out)
        elif os.path.exists(path):
            os.remove(path)
        with open(os.path.join(dirname, name + ".rc"), "w") as f:
            f.write("%s\n" % r.rc)
        with open(os.path.join(dirname, name + ".err"), "w", encoding="utf-8") as f:
            f.write(re.sub(r"\x1b\[[0-9;]*m", "", r.err))
    meta = {"seed": c.seed, "index": c.idx, "rng_seed": c.seed + c.idx, "intended_failure": c.fail_kind,
            "confd_mode": a.mode, "ferry_mode": b.mode, "env": ENV}
    with open(os.path.join(dirname, "case.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------------------
# Minimizing (optional): drop top-level chunks while the difference stays the same kind
# --------------------------------------------------------------------------------------

def minimize(args, store: Store, c: Case, a: Result, b: Result, work: str) -> list[str]:
    want = (a.out is None, b.out is None)
    chunks = list(c.chunks)
    runs = [0]

    def variant(idx: int, ch: list[str]) -> Case:
        v = Case.__new__(type(c))
        v.__dict__.update(c.__dict__)
        v.idx = idx
        v.src_name = "c%d.tmpl" % idx if c.src_name.startswith("c") else c.src_name
        v.chunks = ch
        v.fail_kind = None
        return v

    def still(vs: list[Case]) -> list[bool]:
        runs[0] += 1
        ra, rb, _, _ = render(args, store, vs, work, "min-%d-%d" % (c.idx, runs[0]))
        return [ra[v.idx].out != rb[v.idx].out and (ra[v.idx].out is None, rb[v.idx].out is None) == want
                for v in vs]

    while len(chunks) > 1 and runs[0] < 12:
        vs = [variant(c.idx * 1000 + j, chunks[:j] + chunks[j + 1:]) for j in range(len(chunks))]
        ok = [j for j, keep in enumerate(still(vs)) if keep]
        if not ok:
            break
        if len(ok) > 1:  # try dropping every droppable chunk at once
            rest = [ch for j, ch in enumerate(chunks) if j not in ok]
            if rest and still([variant(c.idx * 1000 + 999, rest)])[0]:
                chunks = rest
                continue
        chunks = vs[ok[0]].chunks
    return chunks


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def apply_avoid():
    """Vocabulary changes for --avoid unicase and dirclean."""
    global STR_LITS, PATHISH, PLAIN_VALUES, JSTRS
    if "unicase" in AVOID:
        fix = lambda xs: [x.replace("ß", "s").replace("ǅ", "D").replace("İ", "I") for x in xs]
        STR_LITS, PLAIN_VALUES, JSTRS = fix(STR_LITS), fix(PLAIN_VALUES), fix(JSTRS)
    if "dirclean" in AVOID:
        unclean = lambda x: x != go_clean(x) and x not in ("", "a/b/", "dir/")
        STR_LITS = [x for x in STR_LITS if not unclean(x)]
        PATHISH = [x for x in PATHISH if not unclean(x)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--confd", required=True, help="the real confd binary")
    ap.add_argument("--ferry", default="/work/tools/ferry-snapshot", help="the ferry binary")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep-failures", metavar="DIR", help="write each differing case to DIR/case-<seed>-<i>/")
    ap.add_argument("--batch", type=int, default=40, help="resources per confd/ferry run (default 40)")
    ap.add_argument("--only", help="comma-separated case numbers to run (with the same --seed)")
    ap.add_argument("--replay", nargs="+", metavar="CASEDIR", help="re-run kept case directories")
    ap.add_argument("--minimize", action="store_true",
                    help="also print a reduced template for each differing case (slower)")
    ap.add_argument("--avoid", default="", metavar="NAMES",
                    help="comma-separated known differences to keep out of the generated cases "
                         "(this changes the cases): " + ", ".join(
                             "%s (%s)" % kv for kv in AVOIDABLE.items()).replace("%", "%%") +
                         "; 'all'; '-NAME' takes one out again")
    ap.add_argument("--timeout", type=float, default=20, help="seconds per tool run")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary directory")
    ap.add_argument("--quiet", action="store_true", help="only the summary")
    args = ap.parse_args()
    for n in [n for n in args.avoid.split(",") if n]:
        if n == "all":
            AVOID.update(AVOIDABLE)
        elif n.lstrip("-") not in AVOIDABLE:
            ap.error("--avoid: unknown name %r (known: %s)" % (n, ", ".join(AVOIDABLE)))
        elif n.startswith("-"):
            AVOID.discard(n[1:])
        else:
            AVOID.add(n)
    apply_avoid()
    for exe in (args.confd, args.ferry):
        if not os.access(exe, os.X_OK):
            ap.error("%s is not executable" % exe)

    work = tempfile.mkdtemp(prefix="ferry-confd-diff-")
    store = None
    started = time.time()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        store = Store(args.ferry, work)
        if args.replay:
            return replay(args, store, work)
        if args.only:
            indices = [int(x) for x in args.only.split(",")]
        else:
            indices = list(range(args.cases))
        total = same = 0
        diffs: list[int] = []
        unintended_confd_failures: list[tuple[int, str]] = []
        intended_ok: list[int] = []
        model_misses: list[int] = []
        hint_counts: dict[str, int] = {}
        view_diffs: list[int] = []
        for bstart in range(0, len(indices), args.batch):
            batch = [Case(args.seed, i) for i in indices[bstart: bstart + args.batch]]
            kvs: dict[str, str] = {}
            for c in batch:
                kvs.update(c.kvs)
            store.put_all(kvs)
            for c in batch:  # the harness's own check: the store holds exactly the case's keys
                got = store.get_prefix(c.root, c.root[:-1] + "y")
                if got != c.kvs:
                    raise RuntimeError("store contents for case %d differ from what was written" % c.idx)
            results = run_cases(args, store, batch, work, "b%d" % bstart)
            views = probe_views(args, store, batch, work, "b%d" % bstart)
            for c in batch:
                a, b = results[c.idx]
                cv, fv = views[c.idx]
                total += 1
                if cv != c.view:
                    model_misses.append(c.idx)
                if cv != fv:
                    view_diffs.append(c.idx)
                if not c.fail_kind and a.rc != 0:
                    unintended_confd_failures.append((c.idx, a.err.strip().splitlines()[-1:] and
                                                      a.err.strip().splitlines()[-1] or ""))
                if c.fail_kind and a.rc == 0:
                    intended_ok.append(c.idx)
                if not differs(a, b):
                    same += 1
                    continue
                diffs.append(c.idx)
                for h in hints(c, a, b, views[c.idx]):
                    hint_counts[h] = hint_counts.get(h, 0) + 1
                reduced = minimize(args, store, c, a, b, work) if args.minimize else None
                if not args.quiet:
                    print(case_report(c, a, b, views[c.idx]))
                    if reduced is not None and len(reduced) < len(c.chunks):
                        print("reduced template (%d of %d chunks keep the difference):" % (
                            len(reduced), len(c.chunks)))
                        print(indent("".join(reduced)))
                    sys.stdout.flush()
                if args.keep_failures:
                    keep_case(os.path.join(args.keep_failures, "case-%d-%d" % (args.seed, c.idx)), c, a, b,
                              reduced)
        elapsed = time.time() - started
        print("=" * 78)
        print("cases: %d   identical: %d   different: %d" % (total, same, len(diffs)))
        if diffs:
            print("different cases: %s" % ",".join(map(str, diffs)))
        if hint_counts:
            print("hints over the differing cases (heuristic; '?' = the template uses the construct): " +
                  ", ".join("%s %d" % kv for kv in sorted(hint_counts.items(), key=lambda kv: -kv[1])))
        print("confd failed on %d cases meant to render (harness generator misses): %s" % (
            len(unintended_confd_failures), ",".join(str(i) for i, _ in unintended_confd_failures) or "-"))
        for i, e in unintended_confd_failures[:10]:
            print("    case %d: %s" % (i, e[:200]))
        print("store view (keys a resource sees) differs in %d cases%s" % (
            len(view_diffs), ": " + ",".join(map(str, view_diffs)) if view_diffs else ""))
        if model_misses:
            print("harness model of confd's view was wrong in %d cases: %s" % (
                len(model_misses), ",".join(map(str, model_misses))))
        if intended_ok:
            print("confd rendered %d cases meant to fail: %s" % (len(intended_ok), ",".join(map(str, intended_ok))))
        print("time: %.1f s (%.1f ms per case, %.1f cases/s)" % (elapsed, 1000 * elapsed / max(total, 1),
                                                                   total / elapsed if elapsed else 0))
        return 1 if diffs else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a harness error, not a difference
        import traceback
        traceback.print_exc()
        return 2
    finally:
        if store:
            store.stop()
        if args.keep_work:
            print("work dir kept: %s" % work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def replay(args, store: Store, work: str) -> int:
    bad = 0
    for n, path in enumerate(args.replay):
        c = ReplayCase(path, n)
        store.wipe()
        store.put_all(c.kvs)
        a, b, _, _ = render(args, store, [c], work, "replay%d" % n)
        a, b = a[c.idx], b[c.idx]
        views = probe_views(args, store, [c], work, "replay%d" % n)[c.idx]
        recorded = None
        try:
            with open(os.path.join(path, "confd.rc")) as f:
                rc = f.read().strip()
            p = os.path.join(path, "confd.out")
            recorded = (open(p, "rb").read() if os.path.exists(p) else None, rc)
        except FileNotFoundError:
            pass
        if recorded is not None and (recorded[0] != a.out or recorded[1] != str(a.rc)):
            print("note: %s: confd's output differs from the recorded confd.out/confd.rc" % path)
        if differs(a, b):
            bad += 1
            print(case_report(c, a, b, views))
        else:
            print("%s: identical (rc %s, %s)" % (path, a.rc, "no file" if a.out is None else
                                                  "%r" % show_bytes(a.out)[:200]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
