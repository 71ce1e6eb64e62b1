"""A tiny model and evaluation range shared by the training, ensemble and compile tests.

Small enough that a run takes seconds on a 2-core CPU; each test file adds its own budget.
"""

TINY_BASE = dict(
    task="reverse_string",
    max_train_length=5,
    eval_max_length=8,
    eval_batch_size=32,
    eval_sub_batch_size=16,
    num_layers=2,
    width=16,
    num_heads=2,
    ff_width=32,
    device="cpu",
)
