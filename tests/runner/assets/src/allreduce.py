"""Sum (rank + 1) over every process with torch.distributed (gloo); rank 0 writes the sum to --out/sum.txt."""

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
a = p.parse_args()
dist.init_process_group("gloo")        # reads MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from the environment
value = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(value)
print(f"rank {dist.get_rank()} of {dist.get_world_size()}: sum {value.item()}", flush=True)
if dist.get_rank() == 0:
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "sum.txt").write_text(f"{value.item()} {os.environ['WORLD_SIZE']}")
dist.destroy_process_group()
