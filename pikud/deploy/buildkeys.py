"""The ENV keys a build reads: changing one with config:set rebuilds the release.

Named here, apart from the runtimes that read them, so that a config change can
tell a build key without importing every runtime. Stdlib only (nothing at all).
"""

from __future__ import annotations

PYTHON_VERSION = "PYTHON_VERSION"                # interpreters.py: which Python
PYTHON_INSTALLER = "PIKU_PYTHON_INSTALLER"       # python.py: uv or pip
UV_PYTHON_INSTALL = "PIKU_UV_PYTHON_INSTALL"     # uvpython.py: may uv install a Python
NODE_VERSION = "NODE_VERSION"                    # node.py: which node
NODE_PACKAGE_MANAGER = "NODE_PACKAGE_MANAGER"    # node.py: npm, yarn or pnpm

BUILD_KEYS = frozenset({PYTHON_VERSION, PYTHON_INSTALLER, UV_PYTHON_INSTALL, NODE_VERSION,
                        NODE_PACKAGE_MANAGER})
