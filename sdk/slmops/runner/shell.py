"""Put values into a command template so that the shell hands each one to the step byte for byte.

Azure ML pastes `${{inputs.x}}` values into the command text; a component that wants a value with spaces writes
`'${{inputs.template}}'` or `"${{inputs.x}}"` itself. Pasted as is, a value holding `$(...)`, backticks, quotes or
a newline would be run by the shell (`--set 'label_column=tone$(touch pwned)'`), and a path with a space would
split into two arguments. `fill` escapes each value for the quoting context the placeholder stands in:

    outside quotes    the whole value single-quoted (shlex.quote)      a b$(x)  ->  'a b$(x)'
    inside '...'      only ' is escaped: '"'"'                          it's     ->  it'"'"'s
    inside "..."      \\ " $ ` are backslash-escaped                     $(x)     ->  \\$(x)

so `bash -c` sees literal text in every case, and the template's own quotes keep their meaning.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}")


def escape(value: str, context: str) -> str:
    """`value` as shell text that reads back as exactly `value` in `context` ("none", "single" or "double")."""
    if context == "single":
        return value.replace("'", "'\"'\"'")
    if context == "double":
        return re.sub(r'([\\"$`])', r"\\\1", value)
    return shlex.quote(value)


def fill(template: str, value_of: Callable[[str, str], str]) -> str:
    """Replace each `${{inputs.x}}`/`${{outputs.y}}` with `value_of(kind, name)`, escaped for where it stands."""
    out: list[str] = []
    context = "none"
    i = 0
    while i < len(template):
        match = PLACEHOLDER.match(template, i)
        if match:
            out.append(escape(value_of(match.group(1), match.group(2)), context))
            i = match.end()
            continue
        char = template[i]
        if char == "\\" and context != "single" and i + 1 < len(template):
            out.append(template[i:i + 2])
            i += 2
            continue
        if char == "'" and context != "double":
            context = "none" if context == "single" else "single"
        elif char == '"' and context != "single":
            context = "none" if context == "double" else "double"
        out.append(char)
        i += 1
    return "".join(out)
