"""``torchrun --nproc_per_node=N -m odtkit.distributed --compressor topk ...``"""

from .ddp import main

main()
