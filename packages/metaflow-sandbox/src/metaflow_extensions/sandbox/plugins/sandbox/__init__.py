"""The metaflow-sandbox extension, by the process each module runs in.

Metaflow runtime (`python flow.py run`, imports metaflow and the flow):
    decorators.py          the step decorators: validate, resolve the backend, write the TaskLaunch, redirect the task
    options.py             decorator attributes → `SandboxOptions` (pure logic)
    attributes.py          attribute names and defaults (no imports)
    env_denylist.py        variables that never enter a sandbox
    sandbox_cli.py         `flow.py sandbox step|list|sweep`

Launcher (one per task; `launch.py` never imports metaflow or the flow):
    launch.py              the light launcher's entry point
    executor.py            one attempt: backend + runtime plan + relay, @batch exit codes
    task_launch.py         `TaskLaunch`, what the runtime hands the launcher
    step_command.py        the trampoline argv → the inner `step` command
    datastore_channels.py  per datastore: mounts, package delivery, credentials, and the relay back
    code_package.py        extracted, byte-compiled code packages (cached per sha)
    client_libraries.py    the boto3/requests bundle for images without them
    s3_access.py           the launcher's S3 client, presigned URLs, scoped STS credentials

Inside the sandbox (imported by the step's own `import metaflow`):
    staged_storage.py      datastore writes and local metadata go to the private staging area
    (the top-level hook `toplevel/sandbox_toplevel.py` installs it when METAFLOW_SANDBOX_STAGING is set)
"""
