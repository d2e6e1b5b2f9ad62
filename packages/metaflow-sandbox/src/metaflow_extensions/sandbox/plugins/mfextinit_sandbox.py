"""Metaflow plugin registration for metaflow-sandbox. Keep this import-light: it loads with `import metaflow`."""

STEP_DECORATORS_DESC = [
    ("sandbox", ".sandbox.decorators.SandboxDecorator"),
    ("bubblewrap", ".sandbox.decorators.BubblewrapDecorator"),
    ("boxlite", ".sandbox.decorators.BoxliteDecorator"),
    ("daytona", ".sandbox.decorators.DaytonaDecorator"),
    ("e2b", ".sandbox.decorators.E2BDecorator"),
]

TRAMPOLINE_CLIS_DESC = [("sandbox", ".sandbox.sandbox_cli.cli")]
