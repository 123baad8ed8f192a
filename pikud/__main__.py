"""`python -m pikud` runs the daemon's command line."""

from pikud.daemon import main

raise SystemExit(main())
