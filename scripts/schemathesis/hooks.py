"""Schemathesis hooks for Bulwark's OpenAPI tests (SCHEMATHESIS_HOOKS=hooks).

One constraint of the gateway's API cannot be written in OpenAPI: the consistency may be
given as the `consistency` query parameter, the `X-Consistency` header, or both, and when
both are given they must agree (a disagreement is ambiguous, so the gateway refuses it
with 400 INVALID_CONSISTENCY, which is tested on its own). When a generated request
carries two *valid* values, the header is made to agree with the query; invalid values
are left alone, so negative tests still send them.
"""
import re

import schemathesis

VALID = re.compile(r"^(ap|cp|quorum)$", re.IGNORECASE)


@schemathesis.hook
def before_call(context, case, **kwargs):
    query = case.query or {}
    headers = case.headers or {}
    q, h = query.get("consistency"), headers.get("X-Consistency")
    if isinstance(q, str) and isinstance(h, str) and VALID.match(q) and VALID.match(h):
        headers["X-Consistency"] = q
        case.headers = headers
