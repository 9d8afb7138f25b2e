"""The operator's entry point: registers kopf handlers, nothing else.

    kopf run -m spa_operator.main --all-namespaces

Reconciliation lives in reconcile_run (one pass: observe, close the gap, report) and plan
(pure); spa_operator.handlers says when it runs: on a watch event that brings something new,
and in a resync pass over every object, so progress never depends on catching an event.
"""

from __future__ import annotations

from typing import Any

import kopf

from spa_core.spec import API_GROUP
from spa_operator import crd
from spa_operator.handlers import (
    configure_operator,
    index_object,
    login,
    start_resync,
    watch_handler,
)

RUN = {"group": API_GROUP, "version": crd.VERSION, "plural": crd.RUN_PLURAL}
SCHEDULE = {"group": API_GROUP, "version": crd.VERSION, "plural": crd.SCHEDULE_PLURAL}

kopf.on.startup()(configure_operator)
kopf.on.startup()(start_resync)
kopf.on.login()(login)
# The indices' names are the keyword arguments start_resync receives them by.
kopf.index(**RUN, id="run_objects")(index_object)
kopf.index(**SCHEDULE, id="schedule_objects")(index_object)


@kopf.on.event(**RUN, id="watch")
def on_run_event(**kwargs: Any) -> None:
    watch_handler(crd.RUN_KIND, **kwargs)


@kopf.on.event(**SCHEDULE, id="watch")
def on_schedule_event(**kwargs: Any) -> None:
    watch_handler(crd.SCHEDULE_KIND, **kwargs)
