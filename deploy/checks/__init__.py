"""Static checks of the deployment files: Dockerfile, compose stack, monitoring and k8s/.

Run them all with `scripts/check-deploy.sh` (or `python -m deploy.checks` from the repository
root); tests/deploy runs the same functions under pytest. Each check returns a list of
findings, empty when everything passes, and raises ToolMissingError when it lacks a tool.
"""
