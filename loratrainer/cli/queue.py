"""`loratrainer queue add CONFIG [--set k=v ...] | list | remove ID | up ID | down ID | run [--stop-on-failure] | clear`."""

from __future__ import annotations

import argparse
import sys

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "cli.queue.removed": "removed {id} ({name})",
    "cli.queue.cleared": "removed {count} run(s)",
    "cli.queue.added": "added {id} ({name}) at position {position}: {path}",
    "cli.queue.empty": "the queue is empty ({path})",
    "cli.queue.from_gui": "(from the GUI)",
})


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("queue", help="line up runs and train them one after another")
    sub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a config file (ours or a Kohya GUI one) to the end of the queue")
    add.add_argument("config", help="our JSON config/preset or a Kohya GUI config file")
    add.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting for this run, e.g. --set network_dim=16 (repeatable)")
    sub.add_parser("list", help="show the queue in order with each run's status")
    for name, text in (("remove", "remove a run from the queue"), ("up", "move a run one place earlier"),
                       ("down", "move a run one place later"), ("retry", "put a failed or interrupted run back to pending")):
        s = sub.add_parser(name, help=text)
        s.add_argument("id", help="the run's id (see queue list)")
    run = sub.add_parser("run", help="train the pending runs in order; a failed run is recorded and the next starts")
    run.add_argument("--stop-on-failure", action="store_true", help="stop the queue at the first run that fails")
    sub.add_parser("clear", help="remove every run that is not running")
    p.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    from loratrainer.launch.run_queue import RunQueue

    queue = RunQueue()
    try:
        return _act(queue, args)
    finally:
        for notice in queue.notices:  # a damaged queue file that was set aside: said once
            print(Msg.of("cli.warning", text=notice), file=sys.stderr)


def _act(queue, args: argparse.Namespace) -> int:
    action = args.queue_command
    if action == "add":
        return _add(queue, args)
    if action == "list":
        _list(queue)
        return 0
    if action == "remove":
        item = queue.remove(args.id)
        print(Msg.of("cli.queue.removed", id=item.id, name=item.name))
        return 0
    if action in ("up", "down"):
        queue.move(args.id, -1 if action == "up" else 1)
        _list(queue)
        return 0
    if action == "retry":
        queue.retry(args.id)
        return 0
    if action == "clear":
        print(Msg.of("cli.queue.cleared", count=queue.clear()))
        return 0
    from loratrainer.run.owner import own_runs_started_here
    from loratrainer.launch.queue_runner import run_queue

    own_runs_started_here()  # a killed runner takes its run with it (the trainer watches for it)

    return run_queue(queue, stop_on_failure=args.stop_on_failure)


def _add(queue, args: argparse.Namespace) -> int:
    from loratrainer.cli.train import _load
    from loratrainer.config.fields import parse_assignments

    try:
        overrides = parse_assignments(args.assignments)
    except (KeyError, ValueError) as exc:
        raise UserError(Msg.of("cli.bad_option", option="--set", detail=str(exc))) from None
    config = _load(args.config, overrides)  # the overrides first, then the checks, as `train --set` does
    item = queue.add(config, source=args.config, overrides=args.assignments)
    position = [i.id for i in queue.items()].index(item.id) + 1
    print(Msg.of("cli.queue.added", id=item.id, name=item.name, position=position, path=str(queue.path)))
    return 0


def _list(queue) -> None:
    items = queue.items()
    if not items:
        print(Msg.of("cli.queue.empty", path=str(queue.path)))
        return
    from loratrainer.launch.run_queue import item_reason

    for n, item in enumerate(items, 1):
        reason = str(item_reason(item))  # what the GUI's Queue column says (from the run's events), in English
        extra = f"  {reason}" if reason else ""
        where = f"  {item.run_dir}" if item.run_dir else ""
        print(f"{n:>3}  {item.id}  {item.status:<11}  {item.name}  {item.source or Msg.of('cli.queue.from_gui')}{where}{extra}", file=sys.stdout)
