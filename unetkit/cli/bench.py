"""``unetkit bench``: placeholder until its module lands."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="(not yet available)")
    p.set_defaults(func=lambda args: 1)
