"""Tiny models and evaluation ranges shared by the tests: ``TINY_BASE`` for the training,
ensemble and compile tests, ``TINY_IMAGES`` for the image workloads (with ``workload=...``).

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

TINY_IMAGES = dict(
    pe="rope2d_axial",
    pe_options={"theta": 100.0},
    steps=12,
    batch_size=8,
    max_train_length=8,
    max_position=8,
    width=16,
    num_heads=2,
    ff_width=32,
    dropout=0.0,
    learning_rate=1e-3,
    log_every=4,
    checkpoint_every=4,
    threads=1,
)
