"""The control API: HTTP/1.1 + JSON over $PIKU_ROOT/pikud.sock."""
