"""Real-parts test harness: registries, images, token server, fault proxy, docker config.

Import from the modules (``tests.harness.images``, ``.push``, ``.registry``,
``.tokenserver``, ``.faultproxy``, ``.dockerconfig``, ``.debian``, ``.expected``);
README.md in this directory lists the API with an example.
"""
