"""The device registry's domain: which gateway a device speaks through and which patient it belongs to.

``binding`` moves a device to another gateway (audited), ``assignment`` assigns a device (and user
index) to a patient and hands the readings it claims to the in-transaction effects (``cloud.effects``)
as ingest does. Both are ``rpm-cloud`` commands (``rebind``, ``assign``). They sit above the twin and
the alerts, which they call; ``cloud.db`` stays underneath.
"""
