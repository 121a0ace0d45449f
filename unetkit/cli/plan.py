"""``unetkit plan``: the data set's fingerprint and the training plan derived from it, with reasons."""

from __future__ import annotations

import argparse

from .train import add_train_options, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="fingerprint a data set and show the training plan 'unetkit train' would use",
        description="Read and check a data set, print its fingerprint (image count, sizes, channels, bit depth, "
                    "intensity percentiles, class pixel frequencies and per-image presence) and the plan derived "
                    "from it (normalisation, patch and batch size, depth and width, foreground sampling, loss, "
                    "training length), each choice with its reason. Takes the data, model, plan and augmentation "
                    "options of 'unetkit train' (given ones win over the plan), and refuses what 'unetkit train' "
                    "would refuse.")
    p.add_argument("dataset", nargs="?", metavar="DATA", help="a dataset folder or built-in name (or use --data)")
    p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file")
    p.add_argument("--write", metavar="PLAN.yaml", help="also write the fingerprint and plan as YAML")
    add_train_options(p, plan_only=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..atomic import atomic_write
    from ..data.base import describe_split
    from ..device import resolve_device
    from ..train.plan import load_and_plan
    from ..train.sanity import data_warnings
    from ..train.setup import check_architecture, check_run

    if args.dataset is not None:
        args.data = args.dataset
    cfg = config_from_args(args)
    device = resolve_device(cfg.device)
    train, val, fp, plan = load_and_plan(cfg, device)
    check_run(cfg, plan, train, val)  # what train would refuse, refused here too
    check_architecture(cfg, plan, train)
    for line in data_warnings(fp):
        print(line)
    rule = getattr(train, "pairing_rule", "")
    print(f"data {cfg.data.source}: {describe_split(train, val)}, {train.num_classes} classes"
          + (f"; {rule}" if rule else "") + "\n")
    print(fp.summary())
    print(f"\nplan for {device.type.upper()} training:")
    print(plan.table())
    if args.write:
        doc = {"fingerprint": fp.to_dict(), "plan": plan.to_dict()}
        atomic_write(args.write, lambda tmp: tmp.write_text(yaml.safe_dump(doc, sort_keys=False)))
        print(f"\nwrote {args.write}")
    return 0
