"""Distilling a teacher's intention knowledge into the local model (`miko-stream distill generator`).

- :mod:`.examples` turns reference posts into token sequences: exactly the extract and generate prompts the graph
  sends (rendered by the runtime's own code), with the teacher's answers as the only supervised tokens.
- :mod:`.trainer` runs the fine-tune (LoRA via peft, or full) on the CPU, with checkpoints it can resume.
- :mod:`.artifact` writes and reads the result folder and merges an adapter into plain weights for serving.
"""
