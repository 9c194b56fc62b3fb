"""The live calls on the PBX, as the AMI events show them.

* :mod:`agi_app.live.tracker` -- every call and leg on the PBX (also those
  agi_app did not place), the one state machine the call-control API, the
  webhooks and the widget read;
* :mod:`agi_app.live.control` -- actions on those calls (transfer, hold,
  park, pickup, eavesdrop, whisper, conference, hangup);
* :mod:`agi_app.live.operators` -- the operators' device states and their
  history.

These parts follow the PBX; they write no call statuses (that is
:mod:`agi_app.calls.lifecycle`).
"""
