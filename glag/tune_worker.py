"""One more worker on a ``glag tune`` study: ``python -m glag.tune_worker SPEC.json INDEX`` (started by
glag.tuning.start_workers; it runs trials until the study holds the spec's number of finished trials)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from glag.tuning import STUDY, open_study, search_of, stop_at

    spec, worker = json.loads(Path(argv[0]).read_text()), int(argv[1])
    search = search_of(spec, worker)
    name = spec.get("study_name", STUDY)
    study = open_study(spec["storage"], search.config.stage_one.seed, spec["prune"], worker, name=name)
    study.optimize(search, callbacks=[stop_at(spec["trials"])], catch=())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
