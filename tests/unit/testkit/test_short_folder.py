"""Run folders under /tmp go when the process that made them exits: test sessions and bench runs alike.

Each green CI run used to leave four `/tmp/inferd-bench-*` folders and one `/tmp/inferd-proof-*` behind,
made by the bench code the process tests run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from testkit.harness import REPO

# Prints the folders it made, then exits normally (atexit runs). Before exiting it forks a child that exits
# through atexit too: the child must not remove the folders its parent still uses.
MAKE_FOLDERS = """
import json, os, sys
from pathlib import Path
from bench import gpu_proof, phases
from testkit.config import short_folder

made = {
    "bench": phases.appliance_env(Path("/nonexistent"), Path("m.keras"), Path("l.txt"))["INFERD_PATHS_RUN_DIR"],
    "proof": gpu_proof.appliance_env(Path("/nonexistent"), "jax", True, {})["INFERD_PATHS_RUN_DIR"],
    "plain": str(short_folder()),
}
child = os.fork()
if child == 0:
    sys.exit(0)
os.waitpid(child, 0)
made["after_fork_child_exit"] = all(Path(folder).is_dir() for folder in made.values())
print(json.dumps(made))
"""


def test_bench_and_test_run_folders_share_one_base_that_the_process_removes_at_exit():
    done = subprocess.run(
        [sys.executable, "-c", MAKE_FOLDERS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    made = json.loads(done.stdout.splitlines()[-1])
    assert made.pop("after_fork_child_exit") is True
    folders = [Path(folder) for folder in made.values()]
    bases = {folder.parent for folder in folders}
    assert len(bases) == 1, folders
    (base,) = bases
    assert base.parent == Path(tempfile.gettempdir()) and base.name.startswith("inferd-runs-"), base
    # Short enough for the unix sockets the appliance puts there (107 bytes with the socket's own name).
    assert all(len(str(folder)) < 60 for folder in folders), folders
    assert not base.exists(), f"{base} outlived the process that made it"
