"""The local model runtime: everything that runs a causal LM in this process, one room of its own.

Map (dependencies point down; only ``chat_model`` knows LangChain, only ``loading`` chooses a runtime):

- :mod:`.chat_model` ``LocalChatModel``: the ``BaseChatModel`` the graph sees; many share one engine.
- :mod:`.loading` ``load_engine`` (native Llama or transformers) and ``LocalEngineHandle`` (engine + batcher).
- :mod:`.batcher` ``ContinuousBatcher``: one worker thread per model; requests join and leave a running batch.
- :mod:`.engine` ``LocalEngine``: the batcher's ``Stepper``; prompt passes, scoring, one decode step at a time.
- :mod:`.prefill` one pass over many prompts (shared prefixes once, little padding); :mod:`.prefix` plans the
  sharing and keeps an LRU cache of prefix keys/values.
- :mod:`.slots` ``SlotCache``: per-row key/value slots written in place at every decode step.
- :mod:`.llama` ``NativeLlama``: a torch-only Llama forward pass; :mod:`.llama_config` reads its config (no torch).
- :mod:`.chat_tokenizer` ``ChatTokenizer``: chat templates and tokens on the ``tokenizers`` library alone.
- :mod:`.precision` bf16 or fp32 weights (``MIKO_LOCAL_DTYPE``): bf16 where the CPU multiplies it natively.

Torch and transformers are imported only once a model is loaded, so importing this package stays cheap.
"""

from graph.models.local.chat_model import LocalChatModel, chat_turns
from graph.models.local.engine import LocalEngine, PromptTooLongError
from graph.models.local.loading import LocalDtype, LocalEngineHandle, ModelLoadError, Runtime, load_engine

__all__ = [
    "LocalChatModel",
    "LocalDtype",
    "LocalEngine",
    "LocalEngineHandle",
    "ModelLoadError",
    "PromptTooLongError",
    "Runtime",
    "chat_turns",
    "load_engine",
]
