"""Training: a LoRA adapter for the student from reviewed cases.

``batches`` (token batches and the answer-only loss), ``checkpoint`` (resumable runs,
loss curves), ``lora`` (the recipe and ``gemma-teacher train``, which hands the adapter
to the release build).

What edges get is decided by the release build and its gate (``teacher.release``).
"""
