# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Start-up hook that makes ``anomalib ... --model DiffAD`` and ``--data MVTec`` resolve.

``anomalib_diffad.pth`` imports this tiny module at interpreter start. It imports nothing heavy: it only
adds a one-shot ``sys.meta_path`` finder that, right after ``anomalib.cli.cli`` (the module behind the
``anomalib`` console script, which imports ``anomalib.models`` and ``anomalib.data`` completely) has been
executed, imports :mod:`anomalib_diffad` (and the benchmark baselines of :mod:`diffad_tools.baselines`), so
that jsonargparse finds ``DiffAD`` among ``AnomalibModule`` subclasses before it parses. Programs that never run anomalib's CLI pay nothing; Python code imports
``anomalib_diffad`` itself. Set ``ANOMALIB_DIFFAD_AUTOLOAD=0`` to disable it.

It also wraps the CLI's ``main``: a :class:`~anomalib_diffad.data.checks.DataCheckError` (a missing dataset
folder, an unreadable image, ...: a problem with the user's data whose message names the file or setting) is
printed as one ``error:`` message on stderr, exit status 1, instead of a traceback of a few hundred lines through
jsonargparse, anomalib and Lightning. ``ANOMALIB_DIFFAD_TRACEBACK=1`` shows the traceback again. And a DiffAD
run whose ``trainer.precision`` is unset gets the precision the hardware runs fastest
(:func:`anomalib_diffad.precision.resolve_cli_precision`: bf16 autocast only where bfloat16 is native).

Only ``os`` and ``sys`` (already loaded by the interpreter) are imported at start-up: the finder is duck-typed
rather than an ``importlib.abc.MetaPathFinder``, whose import alone pulls in ``pathlib``, ``re`` and
``tempfile``.
"""

import os
import sys

TRIGGER = "anomalib.cli.cli"
# Deprecation warnings that every ``anomalib`` CLI run prints (anomalib's own imports of timm.models.layers and
# of its dinov2 package; Lightning's use of torch's LeafSpec in its training loop) and that no user can act on.
# They are ignored right before anomalib.cli.cli executes, and by ``import anomalib_diffad`` before it imports anomalib.
FOREIGN_DEPRECATIONS = (
    "Importing from timm.models.layers is deprecated",
    "The anomalib.models.components.dinov2 package is deprecated",
    "`isinstance(treespec, LeafSpec)` is deprecated",
)


def ignore_foreign_deprecations() -> None:
    """Ignore the :data:`FOREIGN_DEPRECATIONS` (``FutureWarning`` with these exact message starts)."""
    import re  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    for message in FOREIGN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)


def print_data_errors(main: "Callable[[], object]") -> "Callable[[], object]":  # noqa: F821 - no import at start-up
    """Wrap a CLI ``main``: print a ``DataCheckError``'s message alone on stderr and exit with status 1."""
    import functools  # noqa: PLC0415

    @functools.wraps(main)
    def main_printing_data_errors() -> object:
        from anomalib_diffad.data.checks import DataCheckError  # noqa: PLC0415

        try:
            return main()
        except DataCheckError as error:
            if os.environ.get("ANOMALIB_DIFFAD_TRACEBACK", "0") != "0":
                raise
            sys.stderr.write(f"error: {error}\n(ANOMALIB_DIFFAD_TRACEBACK=1 shows the traceback.)\n")
            raise SystemExit(1) from None

    return main_printing_data_errors


class _AfterAnomalibCli:
    """Meta-path finder that wraps the loader of ``anomalib.cli.cli`` to import the plugin after it."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        """Return ``anomalib.cli.cli``'s spec with a loader that imports the plugin after it; ``None`` otherwise."""
        del target
        if fullname != TRIGGER:
            return None
        from importlib.machinery import PathFinder  # noqa: PLC0415

        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_load_plugin(module: object) -> None:
            ignore_foreign_deprecations()
            exec_module(module)
            try:
                import anomalib_diffad  # noqa: F401, PLC0415
                import diffad_tools.baselines  # noqa: F401, PLC0415  (BudgetDraem for configs/benchmark*.yaml)
            except Exception as error:  # noqa: BLE001 - a broken plugin must never break anomalib itself
                import warnings  # noqa: PLC0415

                warnings.warn(f"anomalib-diffad could not be loaded: {error!r}", stacklevel=1)
                return
            main = getattr(module, "main", None)
            if callable(main):
                module.main = print_data_errors(main)  # type: ignore[attr-defined]
            cli_class = getattr(module, "AnomalibCLI", None)
            if cli_class is not None:
                from anomalib_diffad.precision import install_cli_precision  # noqa: PLC0415

                install_cli_precision(cli_class)

        spec.loader.exec_module = exec_then_load_plugin  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register the finder once, unless disabled or anomalib's CLI is already imported."""
    if os.environ.get("ANOMALIB_DIFFAD_AUTOLOAD", "1") == "0" or TRIGGER in sys.modules:
        return
    if not any(isinstance(finder, _AfterAnomalibCli) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterAnomalibCli())


install()
