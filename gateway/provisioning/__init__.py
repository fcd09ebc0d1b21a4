"""Provisioning (issue 19): who this gateway is, how it gets its broker credentials, and the cloud's
configuration for it.

- :mod:`~gateway.provisioning.files`: the private files (0600 in a 0700 directory, written atomically)
  and the one error of the package, :class:`~gateway.provisioning.files.ProvisioningError`.
- :mod:`~gateway.provisioning.identity`: the Ed25519 key made on first start, the gateway id derived
  from it and the claim code printed on the box.
- :mod:`~gateway.provisioning.bootstrap`: the signed poll of the cloud's bootstrap endpoint.
- :mod:`~gateway.provisioning.credentials`: what the cloud sent (broker URL and credentials, the
  running and the last rejected remote config), kept in the data directory.
- :mod:`~gateway.provisioning.remote_config`: the effective configuration from TOML, credentials and
  remote document, and the config topic's payload.
"""
