"""Arguments that several xenrr subcommands share (the recording to open, the guest image it needs).

Owns their names and help texts, so every subcommand spells and explains them the same way.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from xen.inject import input_kinds_text
from xen.logrecord import KIND_DIGEST, KIND_END, kind_name


def add_session_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", metavar="SESSION", type=Path, help="a log written by `xenrr record`")


def add_image_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", metavar="GUEST", type=Path,
                        help="the guest kernel, when it is no longer where it was recorded (must be the same file)")


def add_kind_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", metavar="KIND[,KIND...]",
                        help=f"only records of these kinds: {input_kinds_text()} (input events), "
                             f"{kind_name(KIND_DIGEST)}, {kind_name(KIND_END)}")


def add_goto_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-g", "--goto", "--from", dest="goto", metavar="EVENT", type=int,
                        help="start just before input event EVENT is injected (as rr's -g), not at the first "
                             "instruction; from the nearest stored snapshot before it (SESSION.snap), if any")
