"""Everything the tests share, in one place: stubs, tiny models, builders and waiting. No tests here.

One module per kind (import them as ``from helpers.kafka import produce``; ``tests/`` is on the path):

- :mod:`helpers.wait`: waiting on a condition with a deadline (``wait_until``, ``wait_until_sync``,
  ``wait_for_port_free``). Tests never sleep and then assert: they wait for what they expect, and the
  deadline only bounds a failure (it is generous, because CI machines can be loaded).
- :mod:`helpers.http`: loopback HTTP servers: :func:`~helpers.http.serve_http` for any handler, the
  OpenAI-compatible chat server (echoes, log-probabilities, fixed replies, injected faults, in-flight count)
  and the image server (redirects, oversize, slow and non-image answers).
- :mod:`helpers.models`: tiny random-weight models built in the test (no download, milliseconds): a Llama
  with its tokenizer, an untied Llama, a GGUF laid out like SmolLM2's, a BERT encoder, an image captioner;
  a pure-Python stepper for the continuous batcher; PNG bytes.
- :mod:`helpers.stream`: the stream processor with :class:`~helpers.stream.ScriptedProcessor` in place of the
  graph (slow, gated, failing or hanging posts on demand).
- :mod:`helpers.kafka`: the real embedded broker: unique topics, producing, collecting and auditing outputs,
  the processor CLI as a subprocess.
- :mod:`helpers.index`: intention events, index documents, sample posts and generations for index tests.
- :mod:`helpers.distill`: toy labelled posts for the distillation tests.

Heavy libraries (torch, transformers) are imported inside the builders that need them, so a test that only
wants an HTTP stub stays quick to import.
"""
