"""Events to CRMs (CONTRACT section 6): subscriptions, event generation from
the calls on the PBX, and signed deliveries from a durable outbox.

- :mod:`agi_app.events.service`: subscriptions and publishing (:class:`EventService`);
- :mod:`agi_app.events.generator`: seed 004's rules on the call tracker's events;
- :mod:`agi_app.events.delivery`: the per-subscription delivery workers and the treq sender;
- :mod:`agi_app.events.store`: what the store keeps for them (:class:`EventStore`).

:class:`agi_app.app.EventParts` builds all of them, with the widget feed,
from the configuration.

Only the light modules are imported here: the store imports
:mod:`agi_app.events.store`.
"""

from agi_app.events.signing import SIGNATURE_HEADER, new_secret, sign
from agi_app.events.store import DELIVERY_OUTCOMES, EventStore

__all__ = ["DELIVERY_OUTCOMES", "SIGNATURE_HEADER", "EventStore", "new_secret", "sign"]
