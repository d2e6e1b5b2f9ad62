"""The step decorators: @sandbox and one per backend (@bubblewrap, @boxlite, @daytona, @e2b).

Loaded inside sandboxes too, so the module imports only metaflow and the standard library at the top;
backend and core packages are imported when a hook needs them.
"""

import dataclasses
import os
import sys

from metaflow.decorators import StepDecorator
from metaflow.exception import MetaflowException
from metaflow.plugins.timeout_decorator import get_run_time_limit_for_task

from .attributes import ATTRIBUTE_DEFAULTS, STAGING_ENV

VALIDATED_ENV = "METAFLOW_SANDBOX_VALIDATED"

OTHER_COMPUTE_DECORATORS = ("batch", "kubernetes")
LIGHT_LAUNCHER = "metaflow_extensions.sandbox.plugins.sandbox.launch"


def _config(name):
    """A METAFLOW_<name> setting declared in this extension's config module."""
    from metaflow import metaflow_config

    return getattr(metaflow_config, name, None)


def _host_identity():
    """The host socket and code fingerprint for this run's tasks (computed once per runtime process)."""
    if SandboxDecorator._host_identity is None:
        from .host_client import CODE_ENV, IDLE_ENV, SOCKET_ENV
        from .host_identity import code_fingerprint, host_socket

        SandboxDecorator._host_identity = {
            SOCKET_ENV: host_socket(),
            CODE_ENV: code_fingerprint(),
            IDLE_ENV: str(_config("SANDBOX_HOST_IDLE") or 600),
        }
    return SandboxDecorator._host_identity


def _host_client_entrypoint():
    from .host_client import entrypoint

    return entrypoint()


def _max_workers():
    """The run's --max-workers (the runtime runs inside the `run`/`resume` command's click context)."""
    from metaflow._vendor import click

    context = click.get_current_context(silent=True)
    while context is not None:
        value = context.params.get("max_workers")
        if value:
            return int(value)
        context = context.parent
    return 16  # Metaflow's default


def _input_paths(value):
    """The task's inputs ("run/step/task") from its --input-paths option, as Metaflow compresses them."""
    from metaflow.util import decompress_list

    return [path for path in decompress_list(value) if path] if value else []


class SandboxException(MetaflowException):
    headline = "Sandbox error"


class SandboxDecorator(StepDecorator):
    """Runs this step in a throwaway sandbox; the rest of the flow is unchanged.

    Parameters
    ----------
    backend : str, optional
        "bubblewrap", "boxlite", "daytona", "e2b" or any installed backend. Default: METAFLOW_SANDBOX_BACKEND,
        else the strongest local isolation that works on this machine.
    image : str, optional
        Image to start from (backend-specific; bubblewrap runs the host system read-only).
    cpu, memory, gpu, disk : number, optional
        CPUs, memory (MiB), GPUs and disk (MiB); `@resources` values apply when these are unset.
    timeout : number, optional
        Sandbox lifetime in seconds. Default: the step's `@timeout`, else Metaflow's default (5 days).
    env : dict, optional
        Extra environment variables for the step (strings only). Nothing else of the host's leaks in.
    network : str or list of str, optional
        "none", "datastore" (only what the datastore needs; the default), "full", or a list of destinations
        the step may reach besides its datastore: "host", "host:port", "*.domain", CIDR (docs/security.md).
    options : dict, optional
        Backend-specific settings.
    trusted_types : list of str or "*", optional
        Module prefixes whose classes the step's artifacts may contain (e.g. ["numpy", "pandas"]). Artifacts
        are pickles: by default only plain Python data may leave the sandbox, because unpickling anything
        else on the launcher could run the sandboxed code there. "*" accepts every pickle.
    """

    name = "sandbox"
    backend_name: str | None = None  # set by the per-backend subclasses
    defaults = dict(ATTRIBUTE_DEFAULTS)

    supports_conda_environment = True
    target_platform = "linux-64"

    _default_backend = None
    _host_identity: dict[str, str] | None = None  # the sandbox host's socket and code fingerprint
    _foreach_splits: dict[str, int] = {}  # a foreach parent's task path → its number of splits
    _full_network_noted: set[str] = set()  # backends whose full-network fallback the run was told about
    _saved_packages: dict[
        tuple[str, str], tuple[str, str, str]
    ] = {}  # (root, run id) -> (url, sha, metadata)

    # -- every process (runtime and task) --------------------------------------------------
    def step_init(self, flow, graph, step, decos, environment, flow_datastore, logger):
        if os.environ.get(STAGING_ENV):
            return  # inside the sandbox: the top-level hook already staged the datastore
        self.step = step
        self.decos = decos
        self.flow_datastore = flow_datastore
        self.environment = environment
        self.run_time_limit = get_run_time_limit_for_task(decos)
        self.conda_step = False
        if os.environ.get(VALIDATED_ENV) != str(os.getppid()):
            from .conda_environment import keep_sandbox_entrypoint, uses_environment

            self.conda_step = uses_environment(environment, flow, step)
            keep_sandbox_entrypoint(decos)
        if os.environ.get(VALIDATED_ENV) == str(os.getppid()):
            return  # a task process whose runtime (our parent) already validated every sandboxed step
        self._check_combination(step, decos)
        from metaflow_sandbox_core import SandboxError

        try:
            self._resolve(decos, flow_datastore, logger)
        except SandboxError as error:
            # Metaflow prints each `*` of an error as a highlight marker and drops it: spell out the ones of
            # the message (user input such as trusted_types or a denylist pattern).
            raise SandboxException("Step *%s*: %s" % (step, str(error).replace("*", "<asterisk>")))

    def _check_combination(self, step, decos):
        names = [d.name for d in decos]
        sandboxes = [d.name for d in decos if isinstance(d, SandboxDecorator)]
        if len(sandboxes) > 1:
            raise SandboxException(
                "Step *%s* has %s; use exactly one sandbox decorator per step."
                % (step, " and ".join("@" + n for n in sandboxes))
            )
        for other in OTHER_COMPUTE_DECORATORS:
            if other in names:
                raise SandboxException(
                    "Step *%s* combines @%s with @%s; a step runs on one compute layer — remove one of them."
                    % (step, self.name, other)
                )
        if "parallel" in names:
            raise SandboxException(
                "Step *%s*: @%s does not support @parallel (multi-node) steps; use a plain foreach instead."
                % (step, self.name)
            )

    def _resolve(self, decos, flow_datastore, logger):
        from metaflow_sandbox_core import (
            ConfigError,
            NetworkPolicy,
            SandboxSpec,
            backend_class,
            pick_default_backend,
        )

        from .options import EXTENSION_OPTION_KEYS, check_env, parse_options

        options = parse_options(self._attributes_with_resources(decos))
        for deco in decos:
            variables = deco.attributes.get("vars") if deco.name == "environment" else None
            if isinstance(variables, dict):  # Metaflow passes str(value) of each
                check_env({k: str(v) for k, v in variables.items()}, "@environment(vars=...)")
        name = self._backend_name(options, pick_default_backend, logger)
        backend = backend_class(name)()
        backend.check()
        backend.check_options(options.options, also=EXTENSION_OPTION_KEYS)
        backend.validate(
            SandboxSpec(
                image=options.image,
                cpu=options.cpu,
                memory_mb=options.memory_mb,
                gpu=options.gpu,
                disk_mb=options.disk_mb,
                timeout=options.timeout,
                network=options.network or NetworkPolicy.NONE,
                egress_allow=options.egress_allow,
                options=options.options,
            )
        )
        if options.network is not None:
            try:
                backend.check_network(SandboxSpec(network=options.network, egress_allow=options.egress_allow))
            except ConfigError as error:  # Metaflow drops asterisks from printed errors: spell them out
                raise ConfigError(str(error).replace("*", "<asterisk>")) from None
        falls_back = (
            options.network is None
            and flow_datastore.TYPE != "local"
            and NetworkPolicy.DATASTORE not in backend.capabilities.network_policies
        )
        if falls_back and name not in SandboxDecorator._full_network_noted:
            SandboxDecorator._full_network_noted.add(name)
            logger(
                "The %r backend cannot limit a sandbox's egress to the datastore: sandboxed steps of this run "
                "get full network (set network='full' on them to make that explicit)." % name
            )
        # A sandbox that shares this machine's userland runs the environment Metaflow built here; any other reads
        # the package cache in the datastore. Checked before the generic datastore checks, to name the cache.
        runs_here = backend.capabilities.can_mount and backend.capabilities.isolation < 30
        if self.conda_step and not runs_here:
            from .conda_environment import check_package_cache, package_root

            cache_root = package_root(flow_datastore.TYPE) if flow_datastore.TYPE == "s3" else None
            check_package_cache(name, flow_datastore.TYPE, flow_datastore.datastore_root, cache_root)
        if flow_datastore.TYPE == "local" and not backend.capabilities.can_mount:
            raise ConfigError(
                "The %r backend cannot see this machine's files, so it cannot use the local datastore. "
                "Run with --datastore=s3 and set METAFLOW_DATASTORE_SYSROOT_S3 (and METAFLOW_S3_ENDPOINT_URL "
                "for an S3-compatible store)." % name
            )
        if flow_datastore.TYPE not in ("local", "s3"):
            raise ConfigError(
                "The %s datastore is not supported by sandboxed steps yet; use --datastore=local or "
                "--datastore=s3." % flow_datastore.TYPE
            )
        if flow_datastore.TYPE != "local" and options.network is NetworkPolicy.NONE:
            raise ConfigError(
                "network='none' cannot reach the %s datastore the step reads and writes; leave network unset "
                "(the step gets what its datastore needs) or set network='full'." % flow_datastore.TYPE
            )
        if flow_datastore.TYPE == "s3":
            self._check_s3(flow_datastore)
        from .env_denylist import denylist, refuse_denied

        patterns = denylist(_config("SANDBOX_ENV_DENYLIST") or "")
        refuse_denied(options.env, "env=", patterns)
        for deco in decos:
            if deco.name == "environment":
                refuse_denied(deco.attributes.get("vars") or {}, "@environment", patterns)
        self.options = options
        self.backend_resolved = name
        self.backend_can_mount = backend.capabilities.can_mount
        self.backend_vm = backend.capabilities.isolation >= 30  # Isolation.MICROVM: its own userland
        self.uv_target = self._uv_target(options) if getattr(self.environment, "TYPE", None) == "uv" else None
        # Processes the runtime spawns inherit this and skip re-validating (and re-probing backends).
        os.environ[VALIDATED_ENV] = str(os.getpid())

    _checked_uv: set[tuple[str, str, str]] = set()

    def _uv_target(self, options):
        """`--environment=uv`: the project and what the sandbox runs it with, its uv.lock checked once per run."""
        from .uv_environment import UvTarget, check_project, find_project, sandbox_platform

        here = self.backend_can_mount and not self.backend_vm  # the sandbox shares this machine's userland
        python = options.options.get("python") or _config("SANDBOX_PYTHON")
        # The launcher's Python unless the step names another one here; an image's python3 is assumed to match.
        version = _python_version(python) if here and python else "%d.%d" % sys.version_info[:2]
        target = UvTarget(find_project(os.getcwd()), version, sandbox_platform(self.target_platform, here))
        key = (target.project, target.python_version, target.platform)
        if key not in SandboxDecorator._checked_uv:
            check_project(target)
            SandboxDecorator._checked_uv.add(key)
        return target

    _checked_s3_roots: set[str] = set()

    def _check_s3(self, flow_datastore):
        """Once per run and root: the bucket exists, is reachable and lets the launcher in."""
        root = flow_datastore.datastore_root
        if root in SandboxDecorator._checked_s3_roots:
            return
        from metaflow.metaflow_config import S3_ENDPOINT_URL

        from .s3_access import CREDENTIAL_MODES, S3Access

        mode = _config("SANDBOX_S3_CREDENTIALS") or "sts"
        if mode not in CREDENTIAL_MODES:
            from metaflow_sandbox_core import ConfigError

            raise ConfigError(
                "METAFLOW_SANDBOX_S3_CREDENTIALS=%r; use one of %s." % (mode, ", ".join(CREDENTIAL_MODES))
            )
        S3Access(root, S3_ENDPOINT_URL).check()
        SandboxDecorator._checked_s3_roots.add(root)

    def _attributes_with_resources(self, decos):
        attributes = dict(self.attributes)
        for deco in decos:
            if deco.name == "resources":
                for key in ("cpu", "memory", "gpu", "disk"):
                    if attributes.get(key) in (None, "") and deco.attributes.get(key) not in (
                        None,
                        "",
                        0,
                        "0",
                    ):
                        attributes[key] = deco.attributes[key]
        return attributes

    def _backend_name(self, options, pick_default_backend, logger):
        from metaflow_sandbox_core import ConfigError

        if self.backend_name:
            if options.backend and options.backend != self.backend_name:
                raise ConfigError(
                    "@%s cannot run on backend=%r; use @sandbox(backend=%r) instead."
                    % (self.name, options.backend, options.backend)
                )
            return self.backend_name
        if options.backend:
            return options.backend
        if _config("SANDBOX_BACKEND"):
            return _config("SANDBOX_BACKEND")
        if SandboxDecorator._default_backend is None:
            name, why = pick_default_backend()
            logger("@sandbox runs on %r: %s. Set METAFLOW_SANDBOX_BACKEND to choose." % (name, why))
            SandboxDecorator._default_backend = name
        return SandboxDecorator._default_backend

    # -- runtime (launcher) process --------------------------------------------------------
    def runtime_init(self, flow, graph, package, run_id):
        self.flow = flow
        self.package = package
        self.run_id = run_id

    def runtime_task_created(self, task_datastore, task_id, split_index, input_paths, is_cloned, ubf_context):
        if not is_cloned:
            self._save_package_once()

    def _save_package_once(self):
        key = (self.flow_datastore.datastore_root, self.run_id)
        if key not in SandboxDecorator._saved_packages:
            url, sha = self.flow_datastore.save_data([self.package.blob], len_hint=1)[0]
            SandboxDecorator._saved_packages[key] = (url, sha, self.package.package_metadata)
        return SandboxDecorator._saved_packages[key]

    def runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        if retry_count > max_user_code_retries:
            return  # @catch fallback: runs locally, like @batch
        launch = self._task_launch(cli_args, retry_count)
        cli_args.commands = ["sandbox", "step"]
        cli_args.command_options["sandbox-launch"] = launch.save(os.path.join(launch.cache_dir, "launch"))
        mode = _config("SANDBOX_LAUNCHER") or "host"
        if mode == "cli":
            cli_args.entrypoint[0] = sys.executable
        elif mode in ("process", "fast"):
            cli_args.entrypoint = [sys.executable, "-m", LIGHT_LAUNCHER]
        else:  # the warm host runs the task; the task process is its thin client
            cli_args.entrypoint = _host_client_entrypoint()
            cli_args.env.update(_host_identity())

    def _task_launch(self, cli_args, retry_count):
        from metaflow import util
        from metaflow.metaflow_config import SERVICE_HEADERS, SERVICE_URL
        from metaflow.package import MetaflowPackage

        from .task_launch import TaskLaunch

        url, sha, package_metadata = self._save_package_once()
        package_env = {}
        for key, value in MetaflowPackage.get_post_extract_env_vars(
            package_metadata, dest_dir="{package_dir}"
        ).items():
            package_env[key.rstrip(":")] = value
        options = self.options
        step_env = {
            "METAFLOW_USER": util.get_username() or "sandbox",
            "METAFLOW_RUN_ID": str(self.run_id),
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DEFAULT_DATASTORE": self.flow_datastore.TYPE,
            "METAFLOW_CODE_URL": url,
            "METAFLOW_CODE_SHA": sha,
            "METAFLOW_CODE_DS": self.flow_datastore.TYPE,
            "METAFLOW_CODE_METADATA": package_metadata,
            "PYTHONUNBUFFERED": "x",
            "LANG": "C.UTF-8",
        }
        for deco in self.decos:
            if deco.name == "environment":
                step_env.update({k: str(v) for k, v in deco.attributes.get("vars", {}).items()})
        step_env.update(options.env)
        metadata_type = cli_args.top_level_options.get("metadata") or "local"
        # The interpreter inside: the launcher's own where the backend can mount it and shares this machine's
        # root filesystem, else the image's python3 (a micro-VM boots its image's userland).
        default_python = (
            sys.executable if self.backend_can_mount and not getattr(self, "backend_vm", False) else "python3"
        )
        python = options.options.get("python") or _config("SANDBOX_PYTHON") or default_python
        cache_dir = _config("SANDBOX_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "metaflow-sandbox"
        )
        conda = None
        if getattr(self, "conda_step", False):
            step_env["PYTHONNOUSERSITE"] = "1"
            if self.backend_can_mount and not self.backend_vm:
                python = self.environment.interpreter(self.step)  # built here, its prefix mounted read-only
            else:  # built in the sandbox from the datastore's package cache, then run under its interpreter
                from metaflow_sandbox_core import SandboxError

                from .conda_environment import remote_environment

                try:
                    conda = remote_environment(
                        self.environment,
                        self.flow,
                        self.step,
                        self.target_platform,
                        os.path.abspath(cache_dir),
                        _config("SANDBOX_MICROMAMBA"),
                    )
                except SandboxError as error:
                    raise SandboxException("Step *%s*: %s" % (self.step, error))
        s3 = self._s3_settings() if self.flow_datastore.TYPE == "s3" else {}
        step_env.update(s3.get("env", {}))
        return TaskLaunch(
            backend=self.backend_resolved,
            spec={
                "image": options.image,
                "cpu": options.cpu,
                "memory_mb": options.memory_mb,
                "gpu": options.gpu,
                "disk_mb": options.disk_mb,
                "timeout": options.timeout,
                "network": options.network.value if options.network else None,
                "egress_allow": list(options.egress_allow),
                "options": options.options,
            },
            flow=self.flow.name,
            run_id=str(cli_args.command_options.get("run-id") or self.run_id),
            step=self.step,
            # One decorator instance serves every task of the step: take the task from its own command line.
            task_id=str(cli_args.command_options["task-id"]),
            attempt=int(retry_count),
            datastore_type=self.flow_datastore.TYPE,
            datastore_root=self.flow_datastore.datastore_root,
            metadata_type=metadata_type,
            service_url=SERVICE_URL if metadata_type == "service" else None,
            service_headers=dict(SERVICE_HEADERS or {}) if metadata_type == "service" else {},
            package_blob=url,
            package_sha=sha,
            package_env=package_env,
            python=python,
            python_prefixes=_python_prefixes(python),
            flow_file=os.path.basename(sys.argv[0]),
            cache_dir=os.path.abspath(cache_dir),
            step_env=step_env,
            run_time_limit=float(self.run_time_limit),
            trusted_types=options.trusted_types
            if options.trusted_types == "*"
            else list(options.trusted_types),
            metadata_root=_local_metadata_root(),
            s3_endpoint_url=s3.get("endpoint_url"),
            s3_region=s3.get("region"),
            s3_env=s3.get("env", {}),
            s3_credentials=_config("SANDBOX_S3_CREDENTIALS") or "sts",
            env_denylist=_config("SANDBOX_ENV_DENYLIST") or "",
            timings=bool(_config("SANDBOX_TIMINGS")),
            parents=_input_paths(cli_args.command_options.get("input-paths")),
            max_result_bytes=int(_config("SANDBOX_MAX_RESULT_BYTES") or 16 << 30),
            max_artifact_bytes=int(_config("SANDBOX_MAX_ARTIFACT_BYTES") or 1 << 30),
            relay_timeout=float(_config("SANDBOX_RELAY_TIMEOUT") or 1800),
            foreach_size=self._foreach_size(cli_args),
            max_workers=_max_workers(),
            uv=dataclasses.asdict(self.uv_target) if self.uv_target else None,
            conda=conda,
        )

    def _foreach_size(self, cli_args):
        """How many tasks the foreach this task belongs to starts (0 when it is not a foreach split), so the
        sandbox host can create sandboxes for the splits still to come while this one runs."""
        off = str(_config("SANDBOX_PREWARM")).strip().lower() in ("0", "false", "no", "off")
        if off or cli_args.command_options.get("split-index") in (None, ""):
            return 0
        parents = _input_paths(cli_args.command_options.get("input-paths"))
        if len(parents) != 1:
            return 0
        splits = SandboxDecorator._foreach_splits.get(parents[0])
        if splits is None:
            try:
                _, step, task = parents[0].split("/")
                parent = self.flow_datastore.get_task_datastore(self.run_id, step, task, mode="r")
                splits = int(parent["_foreach_num_splits"])
            except Exception:  # not a plain foreach (or unreadable): no sandboxes ahead
                splits = 0
            SandboxDecorator._foreach_splits[parents[0]] = splits
        return splits

    def _s3_settings(self):
        """Non-secret S3 settings the step needs, as the launcher resolves them."""
        from metaflow.metaflow_config import S3_ENDPOINT_URL

        root = self.flow_datastore.datastore_root
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        env = {"METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": root}
        if S3_ENDPOINT_URL:
            env["METAFLOW_S3_ENDPOINT_URL"] = S3_ENDPOINT_URL
        if region:
            env["AWS_DEFAULT_REGION"] = region
        for name in ("METAFLOW_S3_VERIFY_CERTIFICATE", "METAFLOW_DATATOOLS_S3ROOT"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.setdefault("METAFLOW_DATATOOLS_S3ROOT", root + "/data")
        return {"endpoint_url": S3_ENDPOINT_URL, "region": region, "env": env}


def _python_version(python) -> str:
    """An interpreter's "major.minor"."""
    import subprocess

    from metaflow_sandbox_core import ConfigError

    try:
        return subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError("options={'python': %r} cannot run here: %s" % (python, error))


def _python_prefixes(python) -> list[str]:
    """Directories an interpreter needs: its environment and, for a venv, the Python it was made from."""
    if python == sys.executable:
        return sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    if not os.path.isabs(python):
        return []  # resolved inside the sandbox's own image
    env_dir = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    prefixes = {env_dir, os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    config = os.path.join(env_dir, "pyvenv.cfg")
    if os.path.exists(config):
        with open(config) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "home":
                    prefixes.add(os.path.dirname(os.path.realpath(value.strip())))
    return sorted(prefixes)


def _local_metadata_root():
    from metaflow.plugins.datastores.local_storage import LocalStorage

    return LocalStorage.get_datastore_root_from_config(lambda *args, **kwargs: None, create_on_absent=True)


def _pinned(backend, what):
    """A decorator class named after `backend` that always runs on it."""
    doc = "Runs this step in %s. Same parameters as @sandbox (without `backend`)." % what
    return type(
        "%sDecorator" % backend.title().replace("E2b", "E2B"),
        (SandboxDecorator,),
        {"name": backend, "backend_name": backend, "__doc__": doc, "__module__": __name__},
    )


BubblewrapDecorator = _pinned("bubblewrap", "a bubblewrap (Linux namespaces) sandbox")
BoxliteDecorator = _pinned("boxlite", "a boxlite micro-VM")
DaytonaDecorator = _pinned("daytona", "a Daytona cloud sandbox")
E2BDecorator = _pinned("e2b", "an E2B cloud sandbox")
