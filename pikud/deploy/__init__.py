"""Deploys: git receive and checkout, releases, runtimes and the build pipeline."""
