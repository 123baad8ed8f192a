"""The web front: nginx sites (site.py, locations.py and render.py pure, nginx.py effects),
their certificates (tls.py self-signed, acme.py from acme.sh) and the built-in router."""
