"""Re-check a recorded history and render its report.

    python -m quorum.verify HISTORY.json --model register|kv|list-append
                            [--max-steps N] [--report PREFIX] [--serializable]

Exit status: 0 OK / valid, 1 ILLEGAL / anomalies found, 2 UNKNOWN (budget exhausted),
3 unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from quorum.errors import UsageError
from quorum.verify.elle import check_list_append
from quorum.verify.history import Operation, decode_history
from quorum.verify.linearizability import Verdict, check
from quorum.verify.models import KvModel, Model, RegisterModel
from quorum.verify.report import write_report

MODELS: dict[str, type[RegisterModel] | type[KvModel]] = {
    "register": RegisterModel,
    "kv": KvModel,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quorum.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("history", type=Path, help="history JSON written by encode_history")
    p.add_argument("--model", choices=[*MODELS, "list-append"], default="register")
    p.add_argument("--max-steps", type=int, default=None, help="search budget (register/kv)")
    p.add_argument("--report", type=Path, default=None,
                   help="write PREFIX.json and PREFIX.html")
    p.add_argument("--serializable", action="store_true",
                   help="list-append: ignore real-time order")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        history = decode_history(args.history.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, UsageError) as exc:
        print(f"cannot read {args.history}: {exc}", file=sys.stderr)
        return 3
    if args.model == "list-append":
        return _list_append(history, args)
    model: Model = MODELS[args.model]()
    try:
        result = check(model, history, max_steps=args.max_steps)
    except UsageError as exc:
        print(f"not a {args.model} history: {exc}", file=sys.stderr)
        return 3
    print(f"{result.verdict.value.upper()}: {len(history)} ops, "
          f"{len(result.partitions)} partitions, {result.steps} steps")
    for part in result.failing():
        print(f"  key {part.key!r}: prefix of {len(part.linearized)} ops, "
              f"cannot place op {part.unplaced}")
    if args.report:
        paths = write_report(args.report, result, history, model, title=str(args.history))
        print("report:", *paths)
    return {Verdict.OK: 0, Verdict.ILLEGAL: 1, Verdict.UNKNOWN: 2}[result.verdict]


def _list_append(history: list[Operation], args: argparse.Namespace) -> int:
    try:
        result = check_list_append(history, realtime=not args.serializable)
    except UsageError as exc:
        print(f"not a list-append history: {exc}", file=sys.stderr)
        return 3
    print(f"{'VALID' if result.valid else 'INVALID'}: {result.txn_count} transactions, "
          f"anomalies: {', '.join(result.kinds) or 'none'}")
    for anomaly in result.anomalies[:20]:
        print(f"  {anomaly.kind}: {anomaly.description}")
    if args.report:
        paths = write_report(args.report, result, history, title=str(args.history))
        print("report:", *paths)
    return 0 if result.valid else 1


if __name__ == "__main__":
    sys.exit(main())
