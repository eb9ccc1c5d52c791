"""Make the kubelet warn about kernel settings instead of changing them.

By default the kubelet writes vm.overcommit_memory, vm.panic_on_oom,
kernel.panic, kernel.panic_on_oops and kernel.keys.* at start. The local
cluster shares its machine, so the build turns "modify" into "warn".
"""

import sys
from pathlib import Path

SIGNATURE = "func setupKernelTunables(option KernelTunableBehavior) error {"
PATCH = (
    SIGNATURE + "\n\t// jetty: never change kernel settings (a shared machine); only warn.\n"
    "\tif option == KernelTunableModify {\n\t\toption = KernelTunableWarn\n\t}\n"
)

path = Path(sys.argv[1])
text = path.read_text()
if SIGNATURE not in text or "KernelTunableWarn" not in text:
    sys.exit(f"patch_kubelet: {path} does not look like the expected kubelet source")
path.write_text(text.replace(SIGNATURE, PATCH, 1))
print(f"patch_kubelet: {path} patched")
