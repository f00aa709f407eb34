"""`make deploy` / `make undeploy`: render and apply a deploy/ overlay in the right order (ftdev.deploy).

python hack/deployctl.py render  --overlay kind            # the YAML kubectl would apply
python hack/deployctl.py apply   --overlay gpu --wait      # CRDs first (Established), then the rest
python hack/deployctl.py apply   --overlay kind --dry-run  # server-side dry run of everything
python hack/deployctl.py delete  --overlay kind            # reverse order; the CRD (and every FineTuneJob) last
"""

import sys
from pathlib import Path

# A script, run by path with the venv's python: the library lives in localcluster/ftdev.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "localcluster"))

from ftdev.deploy import main

if __name__ == "__main__":
    sys.exit(main())
