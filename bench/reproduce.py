"""The reproduction protocols, each a set of `glag sweep`s of the shipped recipes (configs/), tabulated
with published figures beside ours:

    .venv/bin/python bench/reproduce.py evidence [--epochs 30]       # Fashion-MNIST-LT: evidence.py
    .venv/bin/python bench/reproduce.py cifar10-lt [--full]          # CIFAR-10-LT images: cifar10_lt.py
    .venv/bin/python bench/reproduce.py cifar10-lt-500               # n_max 500, probe: cifar10_lt.py
    .venv/bin/python bench/reproduce.py cifar100-lt --data-root DIR  # Tables 2, 6, 7: cifar100_lt.py
    .venv/bin/python bench/reproduce.py cifar100-lt-probe --data-root DIR   # the paper's Table 1 probe

Each writes results/<protocol>.csv and results/<protocol>.md with the commands that made them;
`<protocol> --help` lists its options.
"""

from __future__ import annotations

import sys

PROTOCOLS = {
    "evidence": "evidence",
    "cifar10-lt": "cifar10_lt",
    "cifar10-lt-500": "cifar10_lt",
    "cifar100-lt": "cifar100_lt",
    "cifar100-lt-probe": "cifar100_lt",
}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in PROTOCOLS:
        sys.exit(
            f"usage: reproduce.py {{{','.join(PROTOCOLS)}}} [options]; got "
            f"{argv[0] if argv else 'nothing'!r}\n" + __doc__
        )
    module = __import__(PROTOCOLS[argv[0]])
    # the CIFAR-100 module serves two protocols, so it takes the protocol name as its first argument
    if argv[0].startswith("cifar100"):
        sys.exit(module.main(argv))
    sys.exit(module.main(argv[1:], argv[0]) if argv[0].startswith("cifar10") else module.main(argv[1:]))


if __name__ == "__main__":
    main()
