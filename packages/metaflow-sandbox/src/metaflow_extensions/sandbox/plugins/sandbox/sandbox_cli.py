"""`python flow.py sandbox ...`: the trampoline (`step`) and commands to find and clean up sandboxes."""

import sys

from metaflow._vendor import click


@click.group()
def cli():
    pass


@cli.group(help="Commands related to sandboxed steps (metaflow-sandbox).")
def sandbox():
    pass


@sandbox.command(
    help="Run one task in a sandbox. Metaflow calls this; you normally do not.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("step-name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def step(step_name, args):
    from .executor import launch_from_argv

    sys.exit(launch_from_argv(sys.argv[1:]))


def _backends(names):
    from metaflow_sandbox_core import available_backends, load_backend

    for name in names or sorted(available_backends()):
        yield name, load_backend(name)


@sandbox.command("list", help="List live sandboxes of this flow (by default, of its latest run).")
@click.option("--run-id", default=None, help="Only this run.")
@click.option("--all-runs", is_flag=True, help="Every run of this flow.")
@click.option("--backend", "backends", multiple=True, help="Only this backend (repeatable).")
@click.pass_obj
def list_sandboxes(obj, run_id, all_runs, backends):
    for name, box in _find(obj, run_id, all_runs, backends):
        labels = box.labels
        obj.echo_always(
            "%s %s  %s/%s/%s attempt %s"
            % (
                name,
                box.id,
                labels.get("metaflow.run"),
                labels.get("metaflow.step"),
                labels.get("metaflow.task"),
                labels.get("metaflow.attempt"),
            )
        )


@sandbox.command(help="Destroy live sandboxes of this flow (by default, of its latest run).")
@click.option("--run-id", default=None, help="Only this run.")
@click.option("--all-runs", is_flag=True, help="Every run of this flow.")
@click.option("--backend", "backends", multiple=True, help="Only this backend (repeatable).")
@click.pass_obj
def sweep(obj, run_id, all_runs, backends):
    count = 0
    for name, box in _find(obj, run_id, all_runs, backends):
        dict(_backends([name]))[name].destroy(box.id)
        count += 1
    obj.echo_always("Destroyed %d sandbox(es)." % count)


def _find(obj, run_id, all_runs, backends):
    labels = {"metaflow.flow": obj.flow.name}
    if not all_runs:
        if run_id is None:
            from metaflow import util

            run_id = util.get_latest_run_id(obj.echo, obj.flow.name)
        if run_id is not None:
            labels["metaflow.run"] = str(run_id)
    from metaflow_sandbox_core import SandboxError

    for name, backend in _backends(backends):
        try:
            found = backend.list(labels)
        except SandboxError as error:
            if backends:  # asked for by name: say why it cannot be searched
                raise click.ClickException(f"{name}: {error}")
            obj.echo_always(f"Skipping {name}: {error}", err=True)
            continue
        for box in found:
            yield name, box
