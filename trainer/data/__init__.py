"""Data: file formats and the edit-record type (``formats``), the minimal-edit collector and its
prompts (``edit``, ``prompts/``), token alignment (``align``), training examples
(``examples``), preference pairs for the reward model and FIGA (``pairs``) and the generated
synthetic world (``synthetic``)."""
