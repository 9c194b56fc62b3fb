"""Calls from the trunks sent to the dialplan context ``[agi-app-inbound]``:
the caller looked up in the CRM (:mod:`agi_app.inbound.lookup`), named on the
operator's phone and put through to the operator the CRM names, or to the
``[inbound] group`` (:mod:`agi_app.inbound.service`)."""

from agi_app.inbound.lookup import Caller, CRMLookup, Lookup, lookup_guard
from agi_app.inbound.service import INBOUND_SCRIPT, InboundService

__all__ = ["INBOUND_SCRIPT", "CRMLookup", "Caller", "InboundService", "Lookup", "lookup_guard"]
