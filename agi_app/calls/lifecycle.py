"""The one call lifecycle (filled in below)."""

from __future__ import annotations

import time
import uuid

from agi_app.calls import statuses as st

#: kind of call -> {status: the status it must follow}
_OPERATOR_FIRST = {
    st.OPERATOR_PICKUP: st.OPERATOR_CALLTO,
    st.CLIENT_CALLTO: st.OPERATOR_PICKUP,
    st.CLIENT_PICKUP: st.CLIENT_CALLTO,
    st.FINISH: st.CLIENT_PICKUP,
}
_TO_CLIENT = {
    st.CLIENT_PICKUP: st.CLIENT_CALLTO,
    st.OPERATOR_PICKUP: st.OPERATOR_CALLTO,
    st.FINISH: st.CLIENT_PICKUP,
}
_INCOMING = {st.OPERATOR_PICKUP: st.OPERATOR_CALLTO, st.FINISH: st.CLIENT_PICKUP}
REQUIRES: dict[str, dict[str, str]] = {
    **{kind: _OPERATOR_FIRST for kind in st.OPERATOR_FIRST_KINDS},
    st.ANNOUNCEMENT: _TO_CLIENT,
    st.IVR_CALL: _TO_CLIENT,
    st.INCOMING: _INCOMING,
}


def new_call_id() -> str:
    """A sortable, unique call id (time-prefixed)."""
    return f"{int(time.time() * 1000):x}{uuid.uuid4().hex[:12]}"
