"""pete-serve's HTTP service. Data flows one way:

request -> ``middleware`` (body size, metrics) -> ``auth`` -> ``schemas`` + ``limits`` (validation)
-> ``service`` -> ``batching`` (queue, batch) -> ``inference`` (tokenizer -> encoder -> head)
-> ``routes`` (response). ``settings`` configures it, ``metrics`` observes it, ``errors`` maps
every failure to one JSON shape, ``main`` builds the app (``create_app``) and runs it (``main``).
"""
