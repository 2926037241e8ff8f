"""``gemma-teacher cases``: list, show and correct the cases edges escalated.

A person's correction (``cases correct``) is stored beside the teacher's review and
outranks it everywhere downstream: ``CaseStore.labeled_cases`` (datasets, evaluation
sets) takes the person's verdict, keywords and answer first. It reads the store at
``<home>/store.sqlite``; it knows nothing about sockets or models.
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

from shared.answer import parse_safety
from shared.config import load_config
from shared.errors import StoreError
from shared.teacher_config import TeacherConfig
from teacher.data.decisions import person_answer
from teacher.data.store import CaseStore, default_store_path

STATUSES = ("new", "reviewing", "reviewed", "unreviewable")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, None)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)  # accepted after the action too
    ls = sub.add_parser("list", parents=[common], help="the latest cases, newest first")
    ls.add_argument("--status", choices=STATUSES, help="only cases in this state")
    ls.add_argument(
        "--unreviewed", action="store_true", help="only cases without a review (new/unreviewable)"
    )
    ls.add_argument("--limit", type=int, default=50, help="most cases shown (default 50)")
    show = sub.add_parser(
        "show", parents=[common], help="one case with its review and correction, as JSON"
    )
    show.add_argument("case_id")
    fix = sub.add_parser(
        "correct", parents=[common], help="record a person's verdict (outranks the teacher)"
    )
    fix.add_argument("case_id")
    fix.add_argument("--safety", required=True, help="yes or no")
    fix.add_argument("--answer", help="the correct one-sentence answer")
    fix.add_argument("--keywords", help="comma-separated keywords, e.g. smoke,stove")
    fix.add_argument("--note", default="", help="why (free text)")


def _common(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--config", default=default, help="teacher YAML file (for home)")
    parser.add_argument(
        "--home", type=Path, default=default, help="override home (where store.sqlite lives)"
    )


def run(args: argparse.Namespace) -> int:
    home = args.home or load_config(args.config, TeacherConfig).home
    path = default_store_path(home)
    if not path.exists():
        raise StoreError(f"no case store at {path} (has `gemma-teacher serve` run with this home?)")
    store = CaseStore(path, recover=False)  # the server may be reviewing right now
    try:
        if args.action == "list":
            return _list(store, args)
        if args.action == "show":
            doc = store.get(args.case_id)
            if doc is None:
                raise StoreError(f"no case {args.case_id!r} in {path}")
            print(json.dumps(doc, indent=2, sort_keys=True))
            return 0
        safety = parse_safety(args.safety)
        if safety is None or args.safety.lower() not in ("yes", "no", "true", "false"):
            raise StoreError(f"--safety {args.safety!r}: say yes or no")
        keywords = None
        if args.keywords is not None:
            keywords = [k.strip().lower() for k in args.keywords.split(",") if k.strip()]
        answer = person_answer(args.answer, safety)
        decision = store.correct(
            args.case_id, safety, answer, keywords, args.note, who=f"cli:{getpass.getuser()}"
        )
        print(
            f"case {args.case_id}: corrected to safety={'yes' if safety else 'no'} "
            f"(decision {decision}; its edge gets it as a review)"
        )
        return 0
    finally:
        store.close()


def _list(store: CaseStore, args: argparse.Namespace) -> int:
    if args.unreviewed:
        cases = store.list_cases("new", args.limit) + store.list_cases("unreviewable", args.limit)
        cases = sorted(cases, key=lambda c: -c.received_at)[: args.limit]
    else:
        cases = store.list_cases(args.status, args.limit)
    print(f"{'case id':<34} {'edge':<14} {'status':<13} {'safety':<6} input")
    for c in cases:
        safety = "-" if c.safety is None else ("yes" if c.safety else "no")
        text = " ".join(c.input.split())
        print(f"{c.case_id:<34} {c.edge_id[:14]:<14} {c.status:<13} {safety:<6} {text[:60]}")
        if c.status == "unreviewable" and c.status_detail:
            print(f"{'':<34} ^ {c.status_detail}")
    print(f"{len(cases)} case(s) shown of {store.count()} stored")
    return 0
