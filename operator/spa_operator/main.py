"""The operator's entry point: registers kopf handlers, nothing else.

    kopf run -m spa_operator.main --all-namespaces

Reconciliation lives in reconcile_run (one pass: observe, close the gap, report) and plan
(pure). A timer re-runs it, so progress never depends on catching a particular event.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

from spa_operator import crd
from spa_operator.handlers import (
    configure_operator,
    forget_handler,
    login,
    reconcile_handler,
    reconcile_schedule_handler,
)

RUN = {"group": "alignment.spa.dev", "version": crd.VERSION, "plural": crd.RUN_PLURAL}
SCHEDULE = {"group": "alignment.spa.dev", "version": crd.VERSION,
            "plural": crd.SCHEDULE_PLURAL}
INTERVAL = float(os.environ.get("SPA_OPERATOR_RECONCILE_SECONDS", "10"))

kopf.on.startup()(configure_operator)
kopf.on.login()(login)


@kopf.on.resume(**RUN, id="resume")
@kopf.on.create(**RUN, id="create")
@kopf.on.update(**RUN, id="update")
def on_change(**kwargs: Any) -> None:
    reconcile_handler(**kwargs)


@kopf.timer(**RUN, interval=INTERVAL, id="reconcile")
def on_timer(**kwargs: Any) -> None:
    reconcile_handler(**kwargs)


@kopf.on.event(**RUN, id="watch")
def on_event(**kwargs: Any) -> None:
    forget_handler(**kwargs)


@kopf.on.resume(**SCHEDULE, id="resume")
@kopf.on.create(**SCHEDULE, id="create")
@kopf.on.update(**SCHEDULE, id="update")
def on_schedule_change(**kwargs: Any) -> None:
    reconcile_schedule_handler(**kwargs)


@kopf.timer(**SCHEDULE, interval=INTERVAL, id="reconcile")
def on_schedule_timer(**kwargs: Any) -> None:
    reconcile_schedule_handler(**kwargs)
