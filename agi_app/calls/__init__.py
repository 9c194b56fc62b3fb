"""Calls agi_app places or answers, each followed to exactly one final status.

* :mod:`agi_app.calls.statuses` -- the status words and kinds of call
  (owned here; the store and the web layer import them);
* :mod:`agi_app.calls.lifecycle` -- the one call lifecycle: the per-call
  record, the one writer of statuses with the table of which may follow
  which per kind, the id generator, settling from AMI events and channel
  snapshots, and ``reconcile`` after a (re)connect;
* :mod:`agi_app.calls.service` -- operator-first click-to-call (makeCall,
  extToPhone, phoneToPhone, callbacks to a group) and its FastAGI script;
* :mod:`agi_app.calls.outbound` -- announcement and IVR calls to a client;
* :mod:`agi_app.calls.recording` -- the conversation's recording.

Nothing is imported here, so the store can import the status words without
loading the services.
"""
