#!/bin/sh
# Trims the images' virtual environment (/opt/stepchain) of what they never load, before the
# final stage copies it (docker/*.Dockerfile, builder stage). Each cut names what it saves.
set -eu
VENV=/opt/stepchain
SITE=$(echo "$VENV"/lib/python3*/site-packages)
# The Kubernetes client's asyncio half (kubernetes.aio, ~68 MB) and the aiohttp stack only it
# uses (~13 MB): stepchain lists and watches ConfigMaps with the synchronous client.
"$VENV/bin/pip" uninstall -y -q aiohttp aiohttp-retry aiosignal aiohappyeyeballs frozenlist \
    multidict yarl propcache
rm -rf "$SITE/kubernetes/aio"
# Rich's syntax highlighting and Markdown (~12 MB): stepchain's tables and progress bars
# (rich.console, rich.table, rich.progress, rich.live) never load them.
"$VENV/bin/pip" uninstall -y -q pygments markdown-it-py mdurl
# The Kubernetes client's generated API classes and models (~920 modules imported at once by
# `import kubernetes`) as bytecode only, compiled beside where their sources were (Python loads
# such sourceless .pyc files; only tracebacks inside them lose their source lines): ~33 MB of
# sources less, without compiling them in memory at every start (a read-only root
# filesystem keeps no bytecode written at run time).
for dir in "$SITE/kubernetes/client/api" "$SITE/kubernetes/client/models"; do
    "$VENV/bin/python" -m compileall -q -b -j 0 "$dir"
    find "$dir" -name '*.py' -delete
    find "$dir" -depth -type d -name __pycache__ -exec rm -rf {} +
done
# NumPy's own test suite (~26 MB).
find "$SITE/numpy" -depth -type d -name tests -exec rm -rf {} +
# (The wheels' native libraries keep their symbols: `strip` breaks the ones auditwheel patched,
# e.g. NumPy's OpenBLAS: "ELF load command address/offset not page-aligned".)
echo "venv: $(du -sh "$VENV" | cut -f1)"
