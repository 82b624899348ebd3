"""Fails when a module imports a module that imports it (directly or around a loop).

Reads every `use crate::...` and `use super::...` line of each crate's src/, and every other
`crate::`/`super::` path in its code. An import from
module A of something inside module B becomes an edge between the two siblings under their
common parent (encoders::small_cnn using crate::export::FoldedGraph is encoders -> export;
ops::conv2d using crate::ops::cudnn_conv::X is ops::conv2d -> ops::cudnn_conv). Items at a
parent (crate::TrainError) are not edges. Any cycle among siblings is reported.

usage: python3 scripts/check-module-cycles.py CRATE_DIR...
"""
import pathlib, re, sys


def module_path(src, f):
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def use_targets(text):
    """The paths of `use crate::` / `use super::` declarations (groups expanded), and every
    other `crate::a::b` or `super::a` path in code (a call such as `super::x::f()` imports
    `x` as much as a `use` line does). Comments are left out."""
    code = "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))
    out = []
    for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|super)::[^;]+);", code, re.M):
        out.extend(expand(re.sub(r"\s+", "", m.group(1))))
    for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", code):
        out.append(m.group(1))
    return out


def expand(path):
    """crate::a::{b::c, d} -> [crate::a::b::c, crate::a::d]."""
    i = path.find("{")
    if i < 0:
        return [path.split(" as ")[0]]
    depth, parts, start = 0, [], i + 1
    for j in range(i + 1, len(path)):
        c = path[j]
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                parts.append(path[start:j])
                break
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(path[start:j])
            start = j + 1
    out = []
    for p in parts:
        if p:
            out.extend(expand(path[:i] + p))
    return out


def resolve(path, here, modules):
    segs = path.split("::")
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    else:
        base = here
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
        rest = segs
    target = base
    for s in rest:
        if target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target


def check(crate):
    src = pathlib.Path(crate) / "src"
    files = [f for f in src.rglob("*.rs")]
    modules = {module_path(src, f) for f in files}
    # Inline `mod x;` declared files are covered; modules declared inline (`mod tests {`)
    # import through their parent's edges.
    edges = {}
    for f in files:
        here = module_path(src, f)
        for path in use_targets(f.read_text()):
            target = resolve(path, here, modules)
            k = 0
            while k < min(len(here), len(target)) and here[k] == target[k]:
                k += 1
            if k == len(here) or k == len(target):
                continue  # an ancestor or descendant: not a sibling edge
            a, b = here[: k + 1], target[: k + 1]
            edges.setdefault(a, set()).add(b)
    cycles = []
    state = {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    return cycles


def main():
    bad = 0
    for crate in sys.argv[1:]:
        for c in check(crate):
            bad += 1
            print(f"{crate}: module cycle: " + " -> ".join("::".join(m) or "crate" for m in c))
    if bad:
        sys.exit(1)
    print(f"no module cycles in {', '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
