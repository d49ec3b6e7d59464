"""Real-parts test harness: registries, images, token server, fault proxy, docker config.

See README.md in this directory for the API and a usage example.
"""
