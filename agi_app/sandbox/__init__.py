"""The sandbox PBX: Asterisk 22 in a Debian chroot, SIPp phones, test fixtures.

* :mod:`agi_app.sandbox.provision` - build and cache the chroot;
* :mod:`agi_app.sandbox.pbx` - one configured Asterisk instance (:class:`~agi_app.sandbox.pbx.PBX`);
* :mod:`agi_app.sandbox.phones` - SIPp operator phones and the PSTN;
* :mod:`agi_app.sandbox.cli` - ``agi-app sandbox ...``.
"""

from agi_app.sandbox._util import poll

__all__ = ["poll"]
