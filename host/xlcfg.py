"""Domain configuration files in xl.cfg syntax: the grammar of xl's parser and the keys xenrr knows.

Owns reading a config file into a `DomainConfig`. The grammar is libxlu's (Xen's
tools/libs/util/libxlu_cfg_l.l and libxlu_cfg_y.y, documented in xl.cfg(5) "Syntax"):
- a file is settings `KEY = VALUE` or `KEY += VALUE`, each ended by a newline or `;`; empty
  statements are allowed; `#` starts a comment that runs to the end of the line;
- a KEY is `[a-z][_0-9a-z]*`;
- a VALUE is an atom or a list; an atom is a number (`[0-9][0-9a-fx]*`, kept as text and converted
  with C's strtol base 0, so `0x10` is 16) or a string in double or single quotes that does not span
  lines, with xl's escapes (\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH \\ooo); a list is `[ ... ]` of
  values separated by commas, newlines allowed inside it and one trailing comma allowed;
- a KEY given twice: the last one counts; `+=` appends to the previous value of the same type
  (string to string, list to list), as xl does.
Errors are one line in xl's own form: `FILE:LINE: config parsing error near `TEXT': MESSAGE`.

Keys (xl.cfg(5)): name, kernel, memory (MiB), vcpus, cpus (hard affinity, below), cpu_weight (1..65535,
default 256) and cap (percent of one pCPU, 0 = none, at most `cap_limit(vcpus)`) for the credit scheduler, extra / cmdline (the
kernel command line; giving both is refused), on_poweroff / on_crash (destroy, restart, preserve; xl's
other actions need a core dump or a soft reset, which xenrr does not have, and are refused by name),
type ("pv" only). Any other key is refused, naming file and line.

cpus (xl.cfg(5) "CPU Allocation"): "all", "N", "N-M", comma-separated combinations, and "^N" / "^N-M"
to take CPUs away from the set built so far; a list gives each vCPU its own such string (vCPU i gets
element i). A domain's vCPUs take turns on one engine (xen/smp.py), so the domain runs on one pCPU,
placed by vCPU 0's affinity. Invariant: a DomainConfig is fully checked - every value is in range and of its type.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from xen.abi import XEN_LEGACY_MAX_VCPUS as MAX_VCPUS     # every vcpu_info fits in shared_info

KNOWN_KEYS = ("name", "kernel", "memory", "vcpus", "cpus", "cpu_weight", "cap", "extra", "cmdline",
              "on_poweroff", "on_crash", "type")
ACTIONS = ("destroy", "restart", "preserve")
UNSUPPORTED_ACTIONS = ("rename-restart", "coredump-destroy", "coredump-restart", "soft-reset")
DEFAULT_WEIGHT = 256            # Xen's credit scheduler: CSCHED_DEFAULT_WEIGHT
MAX_WEIGHT = 65535
CAP_PERCENT_PER_VCPU = 100      # libxl's bound on a credit cap: 0 .. 100 x the domain's vCPUs
DEFAULT_MEMORY_MIB = 16
MAX_MEMORY_MIB = 4096


def cap_limit(vcpus: int) -> int:
    """The largest credit cap a domain with `vcpus` vCPUs may have: 100 per vCPU. Xen's credit.c takes
    any 16-bit cap; the bound is libxl's (tools/libs/light/libxl_sched.c, sched_credit_domain_set: "Cpu
    cap out of range, valid range is from 0 to (max_vcpu_id + 1) * 100"), which xl applies alike to
    xl.cfg's cap at creation and to `xl sched-credit -c`."""
    return CAP_PERCENT_PER_VCPU * vcpus


def _cap_bound(vcpus: int) -> str:
    return f"{cap_limit(vcpus)} for {vcpus} vCPU(s) (100 per vCPU)"


def cap_range_error(cap: object, vcpus: int) -> str:
    """How `sched-credit` refuses a cap out of `cap_limit`'s range (in the words a config file's gets)."""
    return f"cap must be between 0 and {_cap_bound(vcpus)}, not {cap!r}"


class ConfigError(Exception):
    """A config file that cannot be used: one line naming file and line."""


@dataclass(frozen=True)
class DomainConfig:
    """A checked xl.cfg: what `xenrr create` builds a domain from."""
    name: str
    kernel: Path
    memory_mib: int = DEFAULT_MEMORY_MIB
    vcpus: int = 1
    cpus: tuple[frozenset[int] | None, ...] = (None,)   # per vCPU: hard affinity (None: all pCPUs)
    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    cmdline: str = ""
    on_poweroff: str = "destroy"
    on_crash: str = "destroy"
    source: str = field(default="", compare=False)


# ---------------------------------------------------------------- lexer and parser (xl's grammar)
_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<ident>[a-z][_0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<string>"(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*')
  | (?P<op>\+=|[=;,\[\]])
""", re.VERBOSE)
_SIMPLE_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                   "t": "\t", "v": "\v"}


def _unquote(text: str, error) -> str:
    """A quoted string's value, escapes decoded as libxlu's dequote does."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        char = body[i]
        i += 1
        if char != "\\":
            out.append(char)
            continue
        escape = body[i]
        i += 1
        if escape in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[escape])
        elif escape == "x":
            digits = body[i:i + 2]
            if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                error("invalid backslash hex numerical character escape in quoted string")
            out.append(chr(int(digits, 16)))
            i += 2
        elif escape in "01234567":
            match = re.match(r"[0-7]{0,2}", body[i:])
            out.append(chr(int(escape + match.group(), 8) & 0xFF))
            i += match.end()
        else:
            error(f"invalid escape sequence \\{escape} in quoted string")
    return "".join(out)


def parse_settings(text: str, source: str) -> dict[str, tuple[str | list, int]]:
    """The settings of an xl config: key -> (value, line), a value being a string or a list of them."""
    tokens: list[tuple[str, str, int]] = []
    line, position = 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            bad = text[position:].split("\n", 1)[0]
            raise ConfigError(f"{source}:{line}: config parsing error near `{bad.strip()}': "
                              "syntax error (unterminated string or a character xl does not accept)")
        kind = match.lastgroup
        if kind == "newline":
            tokens.append(("newline", "\n", line))
            line += 1
        elif kind not in ("space", "comment"):
            tokens.append((kind, match.group(), line))
        position = match.end()
    tokens.append(("end", "", line))
    settings: dict[str, tuple[str | list, int]] = {}
    index = 0

    def peek() -> tuple[str, str, int]:
        return tokens[index]

    def fail(token: tuple[str, str, int], message: str = "syntax error"):
        near = "<newline>" if token[0] == "newline" else f"`{token[1]}'" if token[1] else "end of file"
        raise ConfigError(f"{source}:{token[2]}: config parsing error near {near}: {message}")

    def take(*kinds: str) -> tuple[str, str, int]:
        nonlocal index
        token = tokens[index]
        if token[0] not in kinds and token[1] not in kinds:
            fail(token)
        index += 1
        return token

    def skip_newlines() -> None:
        nonlocal index
        while tokens[index][0] == "newline":
            index += 1

    def atom() -> str:
        token = take("number", "string")
        if token[0] == "number":
            return token[1]
        return _unquote(token[1], lambda message: fail(token, message))

    def value() -> str | list:
        if peek()[1] != "[":
            return atom()
        take("[")
        skip_newlines()
        items: list = []
        while peek()[1] != "]":
            items.append(value())
            skip_newlines()
            if peek()[1] != "]":
                take(",")
                skip_newlines()
        take("]")
        return items

    while peek()[0] != "end":
        if peek()[0] == "newline" or peek()[1] == ";":
            index += 1
            continue
        key = take("ident")
        operator = take("=", "+=")
        new = value()
        end = take("newline", ";", "end")
        if end[0] == "end":
            index -= 1
        if operator[1] == "+=" and key[1] in settings:
            old = settings[key[1]][0]
            if isinstance(old, list) != isinstance(new, list):
                fail(operator, f"+= on {key[1]} mixes a string and a list")
            new = old + new
        settings[key[1]] = (new, key[2])
    return settings


# ---------------------------------------------------------------- keys
def parse_cpus(text: str) -> frozenset[int] | None:
    """An xl cpu list ("all", "3", "0-2,5", "0-3,^1") as a set of pCPU numbers (None: all)."""
    chosen: set[int] = set()
    everything = False
    for part in text.split(","):
        part = part.strip()
        exclude = part.startswith("^")
        part = part.removeprefix("^")
        if part == "all" and not exclude:
            everything = True
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(f"{text!r} is not a cpu list (\"all\", \"N\", \"N-M\", \"^N\", separated by commas)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ValueError(f"{part!r}: the range ends before it starts")
        numbers = set(range(first, last + 1))
        if exclude:
            if everything:
                raise ValueError(f"{text!r}: ^ after \"all\" is not supported (name the CPUs to keep)")
            chosen -= numbers
        else:
            chosen |= numbers
    if everything:
        return None
    if not chosen:
        raise ValueError(f"{text!r} leaves no CPU")
    return frozenset(chosen)


def _integer(text: str) -> int:
    """C's strtol with base 0, as xlu_cfg_get_long: decimal, 0x hex, leading-0 octal."""
    match = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a number")
    digits = match.group(2)
    number = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if digits.startswith("0") else int(digits)
    return -number if match.group(1) == "-" else number


def load_config(path: Path, base: Path | None = None) -> DomainConfig:
    """Read and check the xl config at `path`; a relative kernel path is taken from `base` (default:
    the current directory, as xl does)."""
    return parse_config(read_config_text(path), str(path), base or Path.cwd())


def read_config_text(path: Path) -> str:
    """The text of the config file at `path` (ConfigError: unreadable, or not text)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


def parse_config(text: str, source: str, base: Path) -> DomainConfig:
    settings = parse_settings(text, source)
    for key, (_, line) in settings.items():
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{source}:{line}: unknown key {key!r} (xenrr knows {', '.join(KNOWN_KEYS)})")

    def where(key: str) -> str:
        return f"{source}:{settings[key][1]}"

    def string(key: str, default: str | None = None) -> str | None:
        if key not in settings:
            return default
        value = settings[key][0]
        if isinstance(value, list):
            raise ConfigError(f"{where(key)}: {key} must be a single value, not a list")
        return value

    def number(key: str, default: int, low: int, high: int, unit: str = "", bound: str | None = None) -> int:
        text = string(key)
        if text is None:
            return default
        try:
            value = _integer(text)
        except ValueError as error:
            raise ConfigError(f"{where(key)}: {key}: {error}") from None
        if not low <= value <= high:
            raise ConfigError(f"{where(key)}: {key} must be between {low} and {bound or high}{unit}, not {value}")
        return value

    def action(key: str) -> str:
        value = string(key, "destroy")
        if value in UNSUPPORTED_ACTIONS:
            raise ConfigError(f"{where(key)}: {key} = {value!r} is an xl action xenrr does not support "
                              f"(use one of {', '.join(ACTIONS)})")
        if value not in ACTIONS:
            raise ConfigError(f"{where(key)}: {key} must be one of {', '.join(ACTIONS)}, not {value!r}")
        return value

    for required in ("name", "kernel"):
        if required not in settings:
            raise ConfigError(f"{source}: no {required} = ... setting (xl.cfg(5) requires it)")
    name = string("name")
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name) or name.isdigit():
        raise ConfigError(f"{where('name')}: name {name!r} must be 1-64 letters, digits or _.@- and not a number")
    if string("type", "pv") != "pv":
        raise ConfigError(f"{where('type')}: type must be \"pv\" (xenrr runs PV guests only)")
    if "extra" in settings and "cmdline" in settings:
        raise ConfigError(f"{where('cmdline')}: give the command line as cmdline or extra, not both")
    vcpus = number("vcpus", 1, 1, MAX_VCPUS)
    cpus: tuple[frozenset[int] | None, ...] = (None,) * vcpus
    if "cpus" in settings:
        value = settings["cpus"][0]
        try:
            if isinstance(value, list):
                if len(value) > vcpus:
                    raise ValueError(f"the list has {len(value)} entries for {vcpus} vCPU(s)")
                if not all(isinstance(item, str) for item in value):
                    raise ValueError("a list of cpu lists holds strings, not lists")
                per_vcpu = [parse_cpus(item) for item in value]
                cpus = tuple(per_vcpu + [None] * (vcpus - len(per_vcpu)))
            else:
                cpus = (parse_cpus(value),) * vcpus
        except ValueError as error:
            raise ConfigError(f"{where('cpus')}: cpus: {error}") from None
    kernel = Path(string("kernel"))
    return DomainConfig(
        name=name, kernel=kernel if kernel.is_absolute() else base / kernel,
        memory_mib=number("memory", DEFAULT_MEMORY_MIB, 1, MAX_MEMORY_MIB, " MiB"), vcpus=vcpus, cpus=cpus,
        weight=number("cpu_weight", DEFAULT_WEIGHT, 1, MAX_WEIGHT), cap=number("cap", 0, 0, cap_limit(vcpus), bound=_cap_bound(vcpus)),
        cmdline=string("cmdline", string("extra", "")), on_poweroff=action("on_poweroff"),
        on_crash=action("on_crash"), source=source)
