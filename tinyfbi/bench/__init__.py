"""Every benchmark, in one room: one timing helper (timing.py), one machine description (machine.py).

    kernels.py     `python -m tinyfbi.bench.kernels`: every bit-packed kernel vs NumPy/torch float32
    end_to_end.py  prefill and decode of a runner (`python -m tinyfbi.generate ... --bench`)
    llamacpp.py    `python -m tinyfbi.bench.llamacpp`: the packed runtime beside llama.cpp's llama-bench
    train_step.py  `python -m tinyfbi.bench.train_step`: a NumPy training step vs torch eager
    prepare.py     `python -m tinyfbi.bench.prepare`: `tinyfbi.prepare` and the batch path
    gpu.py         `python -m tinyfbi.bench.gpu`: a distillation step on a GPU, tokens/s, MFU, memory
    loss_memory.py `python -m tinyfbi.bench.loss_memory`: peak memory of the head + loss, unfused vs fused

A benchmark may import anything of tinyfbi and kernels; nothing below imports a benchmark.
"""
