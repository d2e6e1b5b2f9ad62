import pytest

from metaflow_sandbox_core import (
    Backend,
    BackendNotInstalledError,
    Capabilities,
    ConfigError,
    Isolation,
    NetworkPolicy,
    SandboxSpec,
    UnavailableError,
    backend_class,
    call_with_retries,
    pick_default_backend,
    registry,
)


class _EntryPoint:
    def __init__(self, name, cls):
        self.name, self.value, self._cls = name, f"tests:{cls.__name__}", cls

    def load(self):
        return self._cls


def _backend(name, isolation, local=True, works=True):
    def check(self):
        if not works:
            raise UnavailableError(f"{name} cannot run here", retryable=False)

    return type(
        name.title(),
        (Backend,),
        {
            "name": name,
            "capabilities": Capabilities(isolation=isolation, local=local, can_mount=True),
            "check": check,
            "_create": lambda self, spec: None,
            "list": lambda self, labels=None: [],
            "destroy": lambda self, sandbox_id: None,
        },
    )


@pytest.fixture
def installed(monkeypatch):
    def install(*classes):
        eps = [_EntryPoint(cls.name, cls) for cls in classes]
        monkeypatch.setattr(registry, "_entry_points", lambda: eps)

    return install


def test_spec_validates_and_parses_network():
    spec = SandboxSpec(cpu=1.5, memory_mb=512, network="full", env={"A": "b"})
    assert spec.network is NetworkPolicy.FULL
    for bad, fragment in [
        ({"cpu": 0}, "greater than 0"),
        ({"memory_mb": "lots"}, "must be a number"),
        ({"cpu": True}, "must be a number"),
        ({"env": {"A": 1}}, "must be strings"),
        ({"env": {"": "x"}}, "needs a name"),
        ({"env": {"A=B": "x"}}, "cannot contain '='"),
        ({"env": {"A": "x\0y"}}, "NUL byte"),
        ({"network": "some"}, "not a network policy"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            SandboxSpec(**bad)


def test_backends_declare_the_option_keys_they_read():
    plain = _backend("plain", Isolation.NAMESPACES)
    assert plain.option_keys == frozenset()
    plain.check_options({})
    with pytest.raises(ConfigError) as err:
        plain.check_options({"snapshot": "x", "colour": 1})
    assert str(err.value) == (
        "Unknown plain option(s) 'colour', 'snapshot' in options={...}; known: none. Remove or correct them."
    )
    cloud = type("Cloud", (plain,), {"name": "cloud", "option_keys": frozenset({"snapshot", "region"})})
    cloud.check_options({"snapshot": "x", "python": "python3"}, also={"python"})
    with pytest.raises(ConfigError, match=r"known: 'python', 'region', 'snapshot'\."):
        cloud.check_options({"snapshto": "x"}, also={"python"})


def test_sandboxes_report_no_memory_kill_unless_the_backend_can_tell():
    from metaflow_sandbox_core import Sandbox

    class Minimal(Sandbox):
        _start = _write_file = _read_file = _destroy = lambda self, *a, **k: None

    assert Minimal("m", SandboxSpec()).memory_exceeded() is False


def test_unknown_and_not_installed_backends_name_the_fix(installed):
    installed()
    with pytest.raises(BackendNotInstalledError, match=r'pip install "metaflow-sandbox\[e2b\]"'):
        backend_class("e2b")
    with pytest.raises(ConfigError, match=r"Unknown sandbox backend 'nope'. Choose one of: .*bubblewrap"):
        backend_class("nope")


def test_a_backend_needing_a_newer_python_says_which(installed, monkeypatch):
    """The e2b SDK needs Python 3.11: on 3.10 the `[e2b]` extra installs nothing, and @e2b says why."""
    installed()
    monkeypatch.setattr(registry.sys, "version_info", (3, 10, 14, "final", 0))
    with pytest.raises(
        BackendNotInstalledError, match=r"needs Python 3\.11 or newer .* this is Python 3\.10"
    ):
        backend_class("e2b")


def test_entry_point_must_be_a_backend(installed):
    class NotABackend:
        name = "odd"

    installed(NotABackend)
    with pytest.raises(ConfigError, match=r"not a metaflow_sandbox_core\.Backend subclass"):
        backend_class("odd")


def test_default_is_strongest_local_backend_that_works(installed):
    installed(
        _backend("vm", Isolation.MICROVM, works=False),
        _backend("ns", Isolation.NAMESPACES),
        _backend("cloud", Isolation.CONTAINER, local=False),
    )
    name, why = pick_default_backend()
    assert name == "ns" and "namespaces" in why
    installed(_backend("vm", Isolation.MICROVM), _backend("ns", Isolation.NAMESPACES))
    assert pick_default_backend()[0] == "vm"


def test_no_working_backend_explains_each(installed):
    installed(_backend("vm", Isolation.MICROVM, works=False))
    with pytest.raises(ConfigError, match=r"vm: vm cannot run here.*METAFLOW_SANDBOX_BACKEND"):
        pick_default_backend()


def test_retries_only_retryable_errors_with_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise UnavailableError("503", retry_after=None)
        return "ok"

    assert call_with_retries(flaky, sleep=sleeps.append, base_delay=1) == "ok"
    assert len(calls) == 3 and 1 <= sleeps[0] <= 1.25 and 2 <= sleeps[1] <= 2.5

    def broken():
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        call_with_retries(broken, sleep=sleeps.append)

    def always():
        raise UnavailableError("down", retry_after=0.1)

    with pytest.raises(UnavailableError):
        call_with_retries(always, attempts=2, sleep=sleeps.append)
