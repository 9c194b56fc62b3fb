"""The sandbox PBX: Asterisk 22 in a Debian chroot, SIPp phones, test fixtures.

* :mod:`agi_app.sandbox.provision` - build and cache the chroot;
* :mod:`agi_app.sandbox.pbx_config` - an instance's port plan and its
  Asterisk configuration files, rendered to text;
* :mod:`agi_app.sandbox.pbx` - one Asterisk instance on disk and running
  (:class:`~agi_app.sandbox.pbx.PBX`);
* :mod:`agi_app.sandbox.dns` - an instance's own DNS server (dnsmasq) with
  the SRV records of ``hagi://`` FastAGI failover;
* :mod:`agi_app.sandbox.scenarios` - phone behaviours rendered into SIPp
  scenarios (fragments in ``sipp/``) and command lines;
* :mod:`agi_app.sandbox.phones` - the SIPp processes of the operator phones
  and the PSTN, and what they saw;
* :mod:`agi_app.sandbox.cli` - ``agi-app sandbox ...``.
"""

from agi_app.sandbox._util import poll

__all__ = ["poll"]
