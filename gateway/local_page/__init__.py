"""The gateway's own page on the home network: status in plain words, devices, candidates to confirm."""
