"""A parser for the part of YAML that kubeconfig files use.

The CNI plugin must not depend on PyYAML (a compiled extension cannot load from the
zipapp), yet the kubeconfigs that kubectl, installers and cloud CLIs write are YAML. This
parser covers what those files contain:

* block mappings and block sequences, including sequences at their key's indentation
  (``clusters:\\n- name: a``), nested to any depth;
* plain, single-quoted and double-quoted scalars (with escapes), also spanning lines;
* literal and folded block scalars (``|``, ``>``, with chomping and indentation indicators);
* flow collections (``{}``, ``[]``, ``{a: b, c: [d, e]}``); comments; ``---``/``...``.

Not supported, and reported as errors naming the line: anchors, aliases, tags, complex
keys (``? ``), several documents. JSON is a subset of this grammar as far as kubeconfigs go.

Plain scalars are returned as text: no YAML 1.1 typing (``no`` is not False, ``012`` is
not 10). ``null``, ``~`` and empty values are None. The caller converts the few
non-string kubeconfig fields (``insecure-skip-tls-verify``) itself.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

_NULLS = ("", "~", "null", "Null", "NULL")
_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class YAMLError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def loads(text: str) -> Any:
    """The document in ``text`` as dicts, lists, strings and None."""
    return _Parser(text).document()


def _resolve(text: str) -> Optional[str]:
    return None if text in _NULLS else text


class _Parser:
    def __init__(self, text: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        self.lines = [line.rstrip("\r") for line in text.split("\n")]
        self.pos = 0

    # ---------------------------------------------------------------- lines

    def error(self, message: str, index: Optional[int] = None) -> YAMLError:
        return YAMLError((self.pos if index is None else index) + 1, message)

    def peek(self) -> Optional[Tuple[int, int, str]]:
        """(line index, indentation, content) of the next line that is not blank or a
        comment; None at the end of the document."""
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            content = line.lstrip(" ")
            if not content.strip(" \t") or content.startswith("#"):
                self.pos += 1
                continue
            indent = len(line) - len(content)
            if content.startswith("\t"):
                raise self.error("tabs cannot indent YAML")
            if indent == 0 and (_is_marker(content, "...") or _is_marker(content, "---")):
                return None
            return self.pos, indent, content
        return None

    # ------------------------------------------------------------- document

    def document(self) -> Any:
        head = self.peek()
        if head is not None and head[2].startswith("%"):
            raise self.error("YAML directives are not supported")
        if head is None and self.pos < len(self.lines) and _is_marker(self.lines[self.pos], "---"):
            rest = self.lines[self.pos][3:].strip(" \t")
            if rest and not rest.startswith("#"):
                # "--- value": the document's node starts on the marker line.
                self.lines[self.pos] = rest
            else:
                self.pos += 1
            head = self.peek()
        value = None if head is None else self.block(head[1], -1)
        # Only an end marker, blank lines and comments may follow.
        self.peek()
        if self.pos < len(self.lines) and _is_marker(self.lines[self.pos], "..."):
            self.pos += 1
            self.peek()
        if self.pos < len(self.lines):
            raise self.error("several YAML documents (or stray content) are not supported")
        return value

    def block(self, indent: int, parent: int) -> Any:
        """The node whose first line is the next one, at ``indent`` (> ``parent``)."""
        head = self.peek()
        assert head is not None
        _, _, content = head
        if _is_item(content):
            return self.sequence(indent)
        if content[0] not in "[{" and self.split_key(content) is not None:
            return self.mapping(indent)
        self.pos += 1
        return self.inline_value(content, parent)

    def mapping(self, indent: int) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        while True:
            head = self.peek()
            if head is None or head[1] < indent:
                return result
            index, line_indent, content = head
            if line_indent > indent:
                raise self.error("unexpected indentation")
            split = self.split_key(content)
            if split is None:
                if _is_item(content):
                    raise self.error("a sequence item where a mapping key was expected")
                raise self.error("expected 'key: value'")
            key, rest = split
            self.pos = index + 1
            result[key] = self.value_after_key(rest, indent)

    def sequence(self, indent: int) -> List[Any]:
        items: List[Any] = []
        while True:
            head = self.peek()
            if head is None or head[1] < indent:
                return items
            index, line_indent, content = head
            if line_indent > indent:
                raise self.error("unexpected indentation")
            if not _is_item(content):
                return items  # a key of the enclosing mapping: "key:\n- a\nnext: b"
            after = content[1:]
            stripped = after.lstrip(" \t")
            if not stripped or stripped.startswith("#"):
                self.pos = index + 1
                nxt = self.peek()
                items.append(self.block(nxt[1], indent) if nxt and nxt[1] > indent else None)
                continue
            # "- key: v" starts a node one column right of the dash: rewrite the dash as
            # a space and parse that node at its own indentation.
            column = indent + 1 + len(after) - len(stripped)
            self.lines[index] = " " * column + stripped
            items.append(self.block(column, indent))

    def value_after_key(self, rest: str, indent: int) -> Any:
        if not rest or rest.startswith("#"):
            nxt = self.peek()
            if nxt is None:
                return None
            if nxt[1] > indent:
                return self.block(nxt[1], indent)
            if nxt[1] == indent and _is_item(nxt[2]):
                return self.sequence(indent)
            return None
        return self.inline_value(rest, indent)

    def split_key(self, content: str) -> Optional[Tuple[str, str]]:
        """("key", rest of the line after ': ') when ``content`` is a mapping entry."""
        if content.startswith("? "):
            raise self.error("complex mapping keys ('? ') are not supported")
        if content[0] in "\"'":
            try:
                key, end = self.quoted_on_line(content)
            except _Unterminated:
                return None  # a quoted scalar spanning lines, not a key
            rest = content[end:].lstrip(" \t")
            if rest.startswith(":") and (len(rest) == 1 or rest[1] in " \t"):
                return key, rest[1:].strip(" \t")
            return None
        if content[0] in "[{" or _is_item(content):
            return None
        index = 0
        while True:
            index = content.find(":", index)
            if index < 0:
                return None
            if content[index - 1 : index + 1] == " #" or " #" in content[:index]:
                return None
            if index + 1 == len(content) or content[index + 1] in " \t":
                key = content[:index].rstrip(" \t")
                if key[:1] in ("&", "*", "!"):
                    raise self.error("anchors, aliases and tags are not supported")
                return key, content[index + 1 :].strip(" \t")
            index += 1

    # ---------------------------------------------------------------- scalars

    def inline_value(self, text: str, parent: int) -> Any:
        """A value starting on a line already consumed: ``text`` is the rest of it."""
        start = self.pos - 1
        first = text[0]
        if first in "&*!":
            raise self.error("anchors, aliases and tags are not supported", start)
        if first in "|>":
            return self.block_scalar(text, parent)
        if first in "[{":
            return self.flow(text, parent)
        if first in "\"'":
            return self.quoted(text, parent)
        return self.plain(text, parent)

    def plain(self, text: str, parent: int) -> Optional[str]:
        line = _strip_comment(text)
        if _has_mapping_indicator(line):
            raise self.error("a mapping value is not allowed here", self.pos - 1)
        words = [line]
        blank = 0
        # Continuation lines: more indented than the parent node, until a comment.
        ends_with_comment = line != text.rstrip(" \t")
        while not ends_with_comment and self.pos < len(self.lines):
            raw = self.lines[self.pos]
            content = raw.lstrip(" ")
            if not content.strip(" \t"):
                blank += 1
                self.pos += 1
                continue
            indent = len(raw) - len(content)
            if indent <= parent or content.startswith("#") or _is_document_marker(raw):
                break
            stripped = _strip_comment(content)
            ends_with_comment = stripped != content.rstrip(" \t")
            if _has_mapping_indicator(stripped) or _is_item(content):
                raise self.error("a mapping or sequence is not allowed inside a scalar")
            words.append("\n" * blank if blank else " ")
            words.append(stripped)
            blank = 0
            self.pos += 1
        if blank:
            # Trailing blank lines belong to what follows; give them back.
            self.pos -= blank
        return _resolve("".join(words))

    def quoted_on_line(self, content: str) -> Tuple[str, int]:
        """A quoted scalar that must end on this line: (value, index after the quote)."""
        value, end, lines = _scan_quoted(content)
        if lines:
            raise self.error("a quoted key must end on its line")
        return value, end

    def quoted(self, text: str, parent: int) -> str:
        start = self.pos - 1
        buffer = text
        taken = 0
        while True:
            try:
                value, end, lines = _scan_quoted(buffer)
                break
            except _Unterminated:
                if self.pos + taken >= len(self.lines):
                    raise self.error("unterminated quoted scalar", start) from None
                buffer += "\n" + self.lines[self.pos + taken]
                taken += 1
        self.pos += lines
        trailer = buffer[end:].split("\n", 1)[0].strip(" \t")
        if trailer and not trailer.startswith("#"):
            raise self.error(f"unexpected text after a quoted scalar: {trailer!r}")
        del parent
        return value

    def block_scalar(self, header: str, parent: int) -> str:
        start = self.pos - 1
        style = header[0]
        indicators = _strip_comment(header[1:]).strip(" \t")
        chomp = ""
        explicit = 0
        for char in indicators:
            if char in "+-" and not chomp:
                chomp = char
            elif char.isdigit() and char != "0" and not explicit:
                explicit = int(char)
            else:
                raise self.error(f"bad block scalar header {header!r}", start)
        base = max(parent, 0)
        content_indent = base + explicit if explicit else 0
        lines: List[str] = []
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            content = raw.lstrip(" ")
            indent = len(raw) - len(content)
            if not content:
                lines.append("")
                self.pos += 1
                continue
            if not content_indent:
                if indent <= parent:
                    break
                content_indent = indent
            if indent < content_indent:
                break
            lines.append(raw[content_indent:])
            self.pos += 1
        body_end = len(lines)
        while body_end and not lines[body_end - 1].strip(" \t"):
            body_end -= 1
        trailing = lines[body_end:]
        # Trailing blank lines past the scalar are not part of it unless kept ("+").
        self.pos -= len(trailing)
        body = lines[:body_end]
        text = "\n".join(body) if style == "|" else _fold(body)
        if chomp == "-" or not body:
            return text if chomp != "+" else text + "\n" * len(trailing)
        if chomp == "+":
            self.pos += len(trailing)
            return text + "\n" + "\n" * len(trailing)
        return text + "\n"

    def flow(self, text: str, parent: int) -> Any:
        start = self.pos - 1
        buffer = text
        while _flow_depth(buffer) > 0:
            if self.pos >= len(self.lines):
                raise self.error("unterminated flow collection", start)
            buffer += "\n" + self.lines[self.pos]
            self.pos += 1
        del parent
        reader = _FlowReader(buffer, start + 1)
        value = reader.node()
        reader.skip_space()
        if reader.index != len(buffer):
            raise self.error(f"unexpected text after a flow collection: {buffer[reader.index :]!r}")
        return value


class _Unterminated(Exception):
    pass


def _scan_quoted(text: str) -> Tuple[str, int, int]:
    """Parse the quoted scalar at the start of ``text`` (which may hold several lines).
    Returns (value, index just after the closing quote, line breaks crossed)."""
    quote = text[0]
    index = 1
    raw: List[str] = []
    while True:
        if index >= len(text):
            raise _Unterminated()
        char = text[index]
        if quote == "'" and char == "'":
            if text[index + 1 : index + 2] == "'":
                raw.append("''")
                index += 2
                continue
            break
        if quote == '"' and char == "\\":
            if index + 1 >= len(text):
                raise _Unterminated()
            raw.append(text[index : index + 2])
            index += 2
            continue
        if quote == '"' and char == '"':
            break
        raw.append(char)
        index += 1
    body = "".join(raw)
    lines = body.count("\n")
    folded = _fold_quoted(body, quote)
    value = folded.replace("''", "'") if quote == "'" else _unescape(folded)
    return value, index + 1, lines


def _fold_quoted(body: str, quote: str) -> str:
    """Line folding inside a quoted scalar: one break is a space, a break followed by n
    blank lines is n newlines; in double quotes a backslash before the break joins the
    lines with nothing between them."""
    if "\n" not in body:
        return body
    lines = body.split("\n")
    out: List[str] = []
    breaks = 0
    joined = False
    for i, line in enumerate(lines):
        first, last = i == 0, i == len(lines) - 1
        text = line if first else line.lstrip(" \t")
        if not last:
            text = text.rstrip(" \t")
            if not first and not text:
                breaks += 1
                continue
        if not first:
            out.append("" if joined else ("\n" * breaks if breaks else " "))
        joined = not last and quote == '"' and _odd_backslashes(text)
        out.append(text[:-1] if joined else text)
        breaks = 0
    return "".join(out)


def _odd_backslashes(text: str) -> bool:
    count = len(text) - len(text.rstrip("\\"))
    return count % 2 == 1


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out: List[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        code = text[index + 1 : index + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            index += 2
        elif code in _HEX_ESCAPES:
            width = _HEX_ESCAPES[code]
            digits = text[index + 2 : index + 2 + width]
            try:
                out.append(chr(int(digits, 16)))
            except ValueError:
                raise ValueError(f"bad escape \\{code}{digits}") from None
            index += 2 + width
        elif code == "":
            index += 1
        else:
            raise ValueError(f"unknown escape \\{code}")
    return "".join(out)


def _fold(lines: List[str]) -> str:
    """Folded block scalar body: single breaks between plain lines become spaces."""
    out = ""
    previous: Optional[str] = None
    blanks = 0
    for line in lines:
        if not line:
            blanks += 1
            continue
        if previous is not None:
            more_indented = line[:1] in (" ", "\t") or previous[:1] in (" ", "\t")
            if blanks:
                out += "\n" * (blanks + (1 if more_indented else 0))
            else:
                out += "\n" if more_indented else " "
        elif blanks:
            out += "\n" * blanks
        out += line
        previous = line
        blanks = 0
    return out


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith(("- ", "-\t"))


def _is_document_marker(line: str) -> bool:
    return _is_marker(line, "---") or _is_marker(line, "...")


def _is_marker(line: str, marker: str) -> bool:
    return line.startswith(marker) and (len(line) == 3 or line[3] in " \t")


def _strip_comment(text: str) -> str:
    """``text`` without a trailing `` # comment`` (plain scalars only: no quotes inside)."""
    if text.startswith("#"):
        return ""
    index = text.find(" #")
    tab = text.find("\t#")
    if tab >= 0 and (index < 0 or tab < index):
        index = tab
    return (text if index < 0 else text[:index]).rstrip(" \t")


def _has_mapping_indicator(text: str) -> bool:
    return ": " in text or ":\t" in text or text.endswith(":")


def _flow_depth(text: str) -> int:
    """Open brackets left at the end of ``text``, ignoring quoted scalars and comments."""
    depth = 0
    quote = ""
    index = 0
    while index < len(text):
        char = text[index]
        previous = text[index - 1] if index else " "
        if quote:
            if char == "\\" and quote == '"':
                index += 1
            elif char == "'" and quote == "'" and text[index + 1 : index + 2] == "'":
                index += 1  # '' is an escaped quote inside single quotes
            elif char == quote:
                quote = ""
        elif char in "\"'" and previous in " \t\n[{,:":
            quote = char
        elif char == "#" and previous in " \t\n":
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            continue
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        index += 1
    return depth


class _FlowReader:
    """Flow collections on one (joined) line: ``{k: v, ...}`` and ``[a, b, ...]``."""

    def __init__(self, text: str, line: int) -> None:
        self.text = text
        self.index = 0
        self.line = line

    def error(self, message: str) -> YAMLError:
        return YAMLError(self.line, f"{message} (in flow collection, column {self.index + 1})")

    def skip_space(self) -> None:
        """Skip blanks, line breaks and comments."""
        while self.index < len(self.text):
            char = self.text[self.index]
            if char == "#" and (self.index == 0 or self.text[self.index - 1] in " \t\n"):
                end = self.text.find("\n", self.index)
                self.index = len(self.text) if end < 0 else end
            elif char in " \t\n":
                self.index += 1
            else:
                return

    def node(self) -> Any:
        self.skip_space()
        char = self.text[self.index : self.index + 1]
        if char == "{":
            return self.mapping()
        if char == "[":
            return self.sequence()
        if char in ('"', "'"):
            return self.quoted()
        if char in ("&", "*", "!"):
            raise self.error("anchors, aliases and tags are not supported")
        return _resolve(self.plain())

    def quoted(self) -> str:
        try:
            value, end, _ = _scan_quoted(self.text[self.index :])
        except _Unterminated:
            raise self.error("unterminated quoted scalar") from None
        self.index += end
        return value

    def plain(self) -> str:
        start = self.index
        while self.index < len(self.text):
            char = self.text[self.index]
            after = self.text[self.index + 1 : self.index + 2]
            if char in ",]}" or (char == ":" and after in ("", " ", "\t", "\n", ",", "]", "}")):
                break
            if char == "#" and self.text[self.index - 1] in " \t\n":
                break
            self.index += 1
        # A plain scalar over several lines folds each break into a space.
        words = (line.strip(" \t") for line in self.text[start : self.index].split("\n"))
        return " ".join(w for w in words if w)

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.text[self.index : self.index + 1] != char:
            raise self.error(f"expected {char!r}")
        self.index += 1

    def sequence(self) -> List[Any]:
        self.expect("[")
        items: List[Any] = []
        while True:
            self.skip_space()
            if self.text[self.index : self.index + 1] == "]":
                self.index += 1
                return items
            items.append(self.node())
            self.skip_space()
            if self.text[self.index : self.index + 1] == ",":
                self.index += 1
            elif self.text[self.index : self.index + 1] != "]":
                raise self.error("expected ',' or ']'")

    def mapping(self) -> Dict[str, Any]:
        self.expect("{")
        result: Dict[str, Any] = {}
        while True:
            self.skip_space()
            if self.text[self.index : self.index + 1] == "}":
                self.index += 1
                return result
            key = self.node()
            if isinstance(key, (dict, list)):
                raise self.error("collection keys are not supported")
            self.skip_space()
            value: Any = None
            if self.text[self.index : self.index + 1] == ":":
                self.index += 1
                self.skip_space()
                if self.text[self.index : self.index + 1] not in (",", "}"):
                    value = self.node()
            result["" if key is None else str(key)] = value
            self.skip_space()
            if self.text[self.index : self.index + 1] == ",":
                self.index += 1
            elif self.text[self.index : self.index + 1] != "}":
                raise self.error("expected ',' or '}'")
