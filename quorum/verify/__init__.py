"""Verification tools: client histories, checkers and reports (see docs/verify.md).

* ``history``            Operation, Recorder, JSON encode/decode
* ``models``             RegisterModel, KvModel (sequential specifications)
* ``linearizability``    check(model, history) -> CheckResult (OK / ILLEGAL / UNKNOWN)
* ``elle``               check_list_append(history) -> ElleResult (strict serializability)
* ``workloads``          check_fencing, check_watches, check_revisions
* ``report``             report_json, report_html, elle_report_html, write_report

Depends only on quorum.errors, msgspec and the standard library.
"""

from __future__ import annotations

from quorum.verify.elle import ElleResult, check_list_append
from quorum.verify.history import (
    Operation,
    Recorder,
    Status,
    decode_history,
    encode_history,
)
from quorum.verify.linearizability import CheckResult, PartitionResult, Verdict, check
from quorum.verify.models import KvModel, Model, RegisterModel
from quorum.verify.report import elle_report_html, report_html, report_json, write_report
from quorum.verify.workloads import (
    FencedWrite,
    RevisionObservation,
    WatcherLog,
    WatchEvent,
    WatchResponse,
    WatchStream,
    check_fencing,
    check_revisions,
    check_watches,
)

__all__ = [
    "CheckResult",
    "ElleResult",
    "FencedWrite",
    "KvModel",
    "Model",
    "Operation",
    "PartitionResult",
    "Recorder",
    "RegisterModel",
    "RevisionObservation",
    "Status",
    "Verdict",
    "WatchEvent",
    "WatchResponse",
    "WatchStream",
    "WatcherLog",
    "check",
    "check_fencing",
    "check_list_append",
    "check_revisions",
    "check_watches",
    "decode_history",
    "elle_report_html",
    "encode_history",
    "report_html",
    "report_json",
    "write_report",
]
