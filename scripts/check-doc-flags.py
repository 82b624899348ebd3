"""Fails when a fenced command block of the README or docs names a flag the CLI does not take.

For every command line (backslash continuations joined) that runs `host-train` or
`edge-runtime`, finds the subcommand path (`run`, `bank inspect`, ...) and checks each
`--flag` against that subcommand's `--help` and the binary's global `--help`.

usage: python3 scripts/check-doc-flags.py BIN_DIR FILE.md...
"""
import pathlib, re, shlex, subprocess, sys

BINARIES = ("host-train", "edge-runtime")
_help_cache = {}


def help_text(binary, path):
    key = (binary, tuple(path))
    if key not in _help_cache:
        out = subprocess.run([binary, *path, "--help"], capture_output=True, text=True)
        _help_cache[key] = out.stdout if out.returncode == 0 else None
    return _help_cache[key]


def flags_of(text):
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", text or ""))


def subcommands_of(text):
    section = (text or "").split("Commands:", 1)
    if len(section) < 2:
        return set()
    names = set()
    for line in section[1].split("\n")[1:]:
        m = re.match(r"^  (\S+)\s", line)
        if m:
            names.add(m.group(1))
        elif line.strip() and not line.startswith(" "):
            break
    return names


def command_lines(md):
    inside, buf = False, ""
    for line in md.split("\n"):
        if line.startswith("```"):
            inside = not inside
            buf = ""
            continue
        if not inside:
            continue
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield buf + line
        buf = ""


def invocations(line):
    """(binary name, words after it) for each host-train / edge-runtime in the line."""
    try:
        words = shlex.split(line, comments=False)
    except ValueError:
        words = line.split()
    out, current, starts = [], None, True
    for w in words:
        if w in ("|", ";", "&&", "||") or w.endswith(";"):
            current, starts = None, True
            continue
        name = w.rsplit("/", 1)[-1]
        # A binary runs where a command starts, or as a path (./target/release/host-train);
        # `cargo build -p edge-runtime` only names it.
        if name in BINARIES and (starts or "/" in w):
            current = (name, [])
            out.append(current)
        elif current is not None:
            current[1].append(w)
        starts = starts and re.match(r"^\w+=", w) is not None
    return out


def check(bin_dir, files):
    problems = []
    for f in files:
        for line in command_lines(pathlib.Path(f).read_text()):
            for name, words in invocations(line):
                binary = str(pathlib.Path(bin_dir) / name)
                top = help_text(binary, [])
                if top is None:
                    problems.append(f"{f}: cannot run {binary} --help")
                    continue
                path, allowed = [], flags_of(top)
                subs = subcommands_of(top)
                for w in words:
                    if w in subs:
                        path.append(w)
                        text = help_text(binary, path)
                        allowed |= flags_of(text)
                        subs = subcommands_of(text)
                for w in words:
                    flag = w.split("=", 1)[0]
                    if flag.startswith("--") and flag not in allowed:
                        problems.append(f"{f}: `{name} {' '.join(path)}` does not accept {flag}: {line.strip()}")
    return problems


def main():
    bin_dir, files = sys.argv[1], sys.argv[2:]
    problems = check(bin_dir, files)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"every flag in the command blocks of {len(files)} files exists")


if __name__ == "__main__":
    main()
