"""agi_app: connects an Asterisk PBX to CRMs and call centres.

One Twisted process runs a FastAGI server, an AMI client, the call log store,
the CRM HTTP API and the browser widget's WebSocket feed.
"""

__version__ = "0.1.0"
