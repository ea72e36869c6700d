"""A small job family defined by the tests, registered through ``MLWORKER_EXTRA_FAMILIES``.

It is what the README's "Adding a job family" shows: a spec, a handler and a model loader,
nothing in the runtime. ``tests.echo`` is batched, ``tests.echo_plain`` plain; both answer
with the text reversed (normal mode) or the first ``LIGHT_CHARS`` characters reversed
(lightweight mode), and say which model (a per-process counter) produced them.
"""
