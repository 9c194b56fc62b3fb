"""Events to CRMs (CONTRACT section 6): subscriptions, event generation from
the calls on the PBX, and signed deliveries from a durable outbox."""
