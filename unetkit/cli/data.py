"""``unetkit data``: work with datasets (``export`` a built-in one as an images/masks folder)."""

from __future__ import annotations

import argparse

from ..data import dataset_names, export_dataset
from ..data.export import export_ct_chest_volumes
from .main import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools (export a built-in dataset as a folder)",
                       description="Dataset tools.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    e = dsub.add_parser("export", help="write a built-in dataset as images/, masks/ and val/ folders",
                        description="Write a built-in dataset in the folder layout 'unetkit train --data DIR' "
                                    "reads, so you can see (and copy) the expected layout.")
    e.add_argument("name", choices=dataset_names(), help="built-in dataset")
    e.add_argument("out", metavar="DIR", help="output folder (must not exist or be empty)")
    e.add_argument("--volumes", action="store_true",
                   help="ct-chest only: write the CT as NIfTI volumes (4 interleaved cases, images/ + masks/) "
                        "instead of PNG slices")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.volumes:
        if args.name != "ct-chest":
            raise CLIError(f"--volumes: only ct-chest is a volume; drop --volumes to export {args.name}")
        root = export_ct_chest_volumes(args.out)
        print(f"wrote {args.name} as 4 NIfTI cases to {root}")
        return 0
    root = export_dataset(args.name, args.out)
    print(f"wrote {args.name} to {root}")
    return 0
