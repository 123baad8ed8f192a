"""``python -m pikud.cli``: how git hooks and authorized_keys run this piku when
no `piku` script is installed (``paths.cli_argv``)."""

from __future__ import annotations

from pikud.cli import main

raise SystemExit(main())
