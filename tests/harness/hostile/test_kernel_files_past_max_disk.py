"""Attack: many files, each under max_file_size (eight 60 MiB files passed
a 64 MiB per-file limit). The working directory is a tmpfs of max_disk
bytes in the worker's mount namespace: past it, writes fail with ENOSPC;
the files vanish with the worker."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

FILL = """import os
chunk = b'x' * (1 << 20)
written = 0
try:
    for i in range(input):
        with open(f'f{i}', 'wb') as f:
            for _ in range(4):
                f.write(chunk)
                f.flush()
                written += 1
except OSError as e:
    result = (e.errno, written)
else:
    result = (0, written)
result"""


@pytest.mark.parametrize("mode", MODES)
def test_files_past_max_disk_fail_with_enospc(start, mode):
    w = start(mode, "--max-disk", str(16 * MIB), "--max-file-size", str(8 * MIB))
    assert sandbox_of(w)["max_disk"] == 16 * MIB
    status, (err, written), _ = job(w, mode, FILL, 8)  # 32 MiB in 4 MiB files
    assert status == "ok"
    assert err == 28 and 12 <= written <= 16  # ENOSPC at 16 MiB
    assert_healthy(w, mode)
    workdir = sandbox_of(w)["workdir"]
    assert os.listdir(workdir) == []  # never on the host's disk
    w.close()
    assert not os.path.exists(workdir)
