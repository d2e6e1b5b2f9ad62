"""The metaflow-sandbox extension, by the process each module runs in.

Metaflow runtime (`python flow.py run`, imports metaflow and the flow):
    decorators.py          the step decorators: validate, resolve the backend, write the TaskLaunch, redirect the task
    options.py             decorator attributes → `SandboxOptions` (pure logic)
    attributes.py          attribute names and defaults (no imports)
    env_denylist.py        variables that never enter a sandbox
    sandbox_cli.py         `flow.py sandbox step|list|sweep`
    host_identity.py       which warm host serves the run (socket, code fingerprint), computed once per run
    conda_environment.py   keeps the sandbox launcher the entrypoint of @pypi/@conda steps (Metaflow's conda decorator
                           would repoint it); refuses them on remote backends

Thin client (one per task, standard library only; the default):
    host_client.py         hands the task to the warm host, writes its lines, forwards signals, exits with its code
    host_protocol.py       the frames on the host's unix socket

Warm host (one per user and machine, started by the first thin client; stops when idle):
    sandbox_host.py        accepts tasks, runs an executor each, destroys a vanished client's sandbox
    warm_pool.py           sandboxes prepared ahead of a foreach's coming tasks

Executor (in the warm host, or in a light launcher per task with METAFLOW_SANDBOX_LAUNCHER=process; neither
imports metaflow or the flow):
    launch.py              the light launcher's entry point
    executor.py            one attempt: backend + runtime plan + relay, @batch exit codes
    task_launch.py         `TaskLaunch`, what the runtime hands the launcher
    step_command.py        the trampoline argv → the inner `step` command
    datastore_channels.py  per datastore: mounts, package delivery, credentials, and the relay back
    task_dirs.py           the task's directories on this machine (by launcher); sweeps a killed launcher's
    code_package.py        extracted, byte-compiled code packages (cached per sha)
    client_libraries.py    the boto3/requests bundle for images without them
    s3_access.py           the launcher's S3 client, presigned URLs, scoped STS credentials
    uv_environment.py      --environment=uv: the locked packages installed once per environment key, mounted or archived

Inside the sandbox (imported by the step's own `import metaflow`):
    staged_storage.py      datastore writes and local metadata go to the private staging area
    (the top-level hook `toplevel/sandbox_toplevel.py` installs it when METAFLOW_SANDBOX_STAGING is set)
"""
