"""Data: file formats and the edit-record type (``formats``), the minimal-edit collector and its
prompts (``edit``, ``prompts/``), token alignment (``align``), training examples
(``examples``) and the generated synthetic world (``synthetic``)."""
