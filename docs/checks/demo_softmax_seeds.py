"""The demo config (`daps train --preset mnist5k-demo`) with the CPU softmax path of this checkout ("new") and with
torch's softmax kernel at every row length ("old", the path before commit aaf6e2b), one seed at a time.

    DAPS_DATA_DIR=../shared/data python docs/checks/demo_softmax_seeds.py new|old SEED

Trains into /tmp/demo-VARIANT-sSEED and prints the final validation (log p(x|z) among it).
"""

import sys

import daps.nets.layers as layers
from daps.cli import main

variant, seed = sys.argv[1], sys.argv[2]
if variant == "old":
    layers.SHORT_SOFTMAX_ROWS = 0  # no row is short: torch's softmax everywhere
sys.exit(main(["train", "--preset", "mnist5k-demo", f"train.out_dir=/tmp/demo-{variant}-s{seed}",
               f"train.seed={seed}", "train.progress=false"]))
