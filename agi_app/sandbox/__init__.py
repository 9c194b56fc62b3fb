"""The sandbox PBX: Asterisk 22 in a Debian chroot, SIPp phones, test fixtures."""
