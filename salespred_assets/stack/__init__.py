"""`salespred stack`: the docker-compose topology as local processes (see docs/stack.md).

- :mod:`.config`: the instance and workspace files, generated from ``deploy/dagster.yaml`` (packaged copy:
  ``dagster.deploy.yaml``) and ``deploy/workspace.docker.yaml``, differing only in the launcher and the addresses.
- :mod:`.processes`: start, watch and stop the code server, webserver, daemon and seller app, with a state file.
- :mod:`.launcher` and :mod:`.workers`: the run launcher, each run a process of its own (as a container is).
"""
