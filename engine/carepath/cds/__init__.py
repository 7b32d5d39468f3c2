"""CDS Hooks 2.0 on the carepath engine: discovery, patient-view, order-select, order-sign and feedback.

``cards`` maps a decision to cards (pure), ``request`` validates requests and feedback (pure),
``respond`` is what a worker process does for a call, ``feedback`` keeps feedback, ``fetch`` gets
what a prefetch lacks from the EHR's FHIR server, and ``app`` is the Starlette front end.
"""
