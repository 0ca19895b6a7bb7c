"""The compiler: a shell one-liner becomes a Pipeline manifest.

`compile_pipeline('seq 100 | grep 7 | wc -l')` returns the manifest as a dict. Bash
is the reference: wherever a construct is accepted, each argv is exactly what bash
would pass; whatever would need a shell, or a node's files or environment, to mean
something is refused with a `CompileError` pointing at its column, never compiled
to something else.

Accepted:
  - stages joined by `|`; words with '...', "..." (backslash escapes only $ ` " \\
    and newline), backslash escapes, and pieces joined (a'b'"c" is abc); tabs and
    spaces between words; newlines inside quotes;
  - `VAR=value` before the command word -> the agent's env (the last one wins);
  - `< file` (first stage), `> file` and `>> file` (last stage), `2> file` and
    `2>> file` (any stage), attached or spaced, anywhere in the stage: files of the
    machine running `oneosctl run`; the first stage otherwise reads the pipeline's
    stdin and the last writes its stdout;
  - `@ NODE_ID` or `@ LABEL=VALUE[,LABEL=VALUE...]` ending a stage -> requires.node
    or requires.labels; `LABEL!=VALUE`, `LABEL` (it exists) and `!LABEL` (it does not)
    among them -> requires.selector (`@` only as an unquoted word of its own; a lone
    word without '=' or '!' is a node id);
  - a relative command path (./ctl.py) or an interpreter's script (python3 ctl.py),
    when the file exists in the base directory -> the agent's files;
  - a `$` that starts no expansion (`a$`, `$/`), `#` inside a word (a#b), `{x}`,
    `{}`, `!` after the command word: as bash keeps them.

Refused:
  - `;`, `&&`, `||`, `&`, `|&`, `(`, `)`, `{ ... }` groups, shell keywords (if,
    while, for, case, time, [[, ...) and `!` at a command's start;
  - `$VAR`, `${...}`, `$1`, `$?` and the other parameters, `$(...)`, backticks,
    `$((...))`, `$[...]`, `$'...'`, `$"..."`;
  - here-documents `<<`, here-strings `<<<`, process substitution `<(` `>(`;
    `&>`, `>&`, `<&`, `<>`, `>|`, descriptors other than 2 (`1>`, `0<`, `{fd}>`),
    `2<`; `<` after the first stage, `>`/`>>` before the last, a stream redirected
    twice, a redirection without a file or to an empty name;
  - file name patterns: unquoted `*`, `?`, `[...]`; brace expansion `{a,b}`,
    `{1..3}`; `~` at a word's start, or after `=` / `:` in NAME=value words;
  - `#` comments; newlines outside quotes, and backslash-newline continuations;
    control characters (all but tab, and newline inside quotes) and text that is
    not UTF-8;
  - `VAR+=value`; shell builtins as commands (cd, export, exec, read, ...); an
    empty command name; a stage of only assignments or redirections; empty stages;
  - shipping a path with `..`; an invalid node id, label key or pipeline name.
"""

from oneos.compiler.builder import INTERPRETERS, compile_pipeline, stage_name
from oneos.compiler.errors import CompileError
from oneos.compiler.lexer import Operator, Word, tokenize

__all__ = ["INTERPRETERS", "CompileError", "Operator", "Word", "compile_pipeline", "stage_name", "tokenize"]
