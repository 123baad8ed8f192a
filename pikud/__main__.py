"""`python -m pikud` runs the daemon's command line."""

from pikud.launch import main

raise SystemExit(main())
