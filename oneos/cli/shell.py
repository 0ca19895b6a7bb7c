"""`oneos`: the interactive shell client.

For now it reads oneosctl commands (`get nodes`, `get boot`, `validate -f FILE`, ...)
one line at a time against the cluster named by ONEOS_NAMESERVER; the file-system
style commands of the original shell (ls, ps, cd, cat, kill) come with agents.
"""

from __future__ import annotations

import shlex
import sys

from oneos.cli import oneosctl

PROMPT = "oneos> "


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        # `oneos get nodes` runs one command, like `bash -c`.
        return oneosctl.main(args, prog="oneos")
    interactive = sys.stdin.isatty()
    if interactive:
        print("OneOS shell: oneosctl commands (try `get nodes`), `help`, `exit`.", file=sys.stderr)
    status = 0
    while True:
        try:
            line = input(PROMPT if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            print(f"oneos: {exc}", file=sys.stderr)
            status = 2
            continue
        if not words:
            continue
        if words[0] in ("exit", "quit", "logout"):
            break
        if words[0] == "help":
            words = ["--help"]
        status = oneosctl.main(words)
    return status


def entry() -> None:
    """The console script (see oneos.bus.client.exit_process)."""
    from oneos.bus.client import exit_process
    exit_process(main())


if __name__ == "__main__":
    entry()
