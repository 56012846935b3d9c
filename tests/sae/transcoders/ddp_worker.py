"""One rank of `torchrun --nproc_per_node 2 ddp_worker.py OUT`: a skip transcoder and a CLT trained through
--distributed ddp's communicator on the synthetic pairs, saved by rank 0 (test_ddp.py compares them)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from synthetic import BATCH, DDP_KINDS, ddp_train_config  # noqa: E402

from sae.data import PairBatches  # noqa: E402
from sae.distributed.comm import DataParallel, RankShare  # noqa: E402
from sae.distributed.group import process_group  # noqa: E402
from sae.train import train  # noqa: E402


def main(out: Path) -> None:
    with process_group("cpu", 60) as (rank, world):
        for name, (make, data) in DDP_KINDS.items():
            x, y = data(4096)
            comm = DataParallel()
            sae = make()
            train(sae, RankShare(PairBatches(x, y, BATCH), rank, world, BATCH), ddp_train_config(), out / name, comm=comm)
            if comm.is_writer:
                sae.save(out / name / "saved")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
