"""Defects the helpers of this stop found outside their files and left: the patch log's plan said
route mflr-first of a plan of one-word (ool) sites, where `plan --format json` says null."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from rewriter.generations import Variant
from rewriter.log import _plan_json
from rewriter.plan import SiteRequest, plan
from rewriter.states import SiteState


def _logged_route(*requests: SiteRequest) -> Any:
    p = plan(list(requests))
    summary = _plan_json(cast(Any, SimpleNamespace(plan=p, word_writes=0)))
    assert summary is not None
    return summary["route"], p


def test_the_logs_plan_names_a_route_only_where_plan_json_does() -> None:
    route, p = _logged_route(SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED))
    assert route is None and not p.routed
    route, p = _logged_route(
        SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED),
        SiteRequest(Variant.PATCHABLE, SiteState.NOPPED, SiteState.ENABLED),
    )
    assert route == p.route.value and p.routed
