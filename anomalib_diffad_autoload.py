# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Start-up hook that makes ``anomalib ... --model DiffAD`` and ``--data MVTec`` resolve.

``anomalib_diffad.pth`` imports this tiny module at interpreter start. It imports nothing heavy: it only
adds a one-shot ``sys.meta_path`` finder that, right after ``anomalib.cli.cli`` (the module behind the
``anomalib`` console script, which imports ``anomalib.models`` and ``anomalib.data`` completely) has been
executed, imports :mod:`anomalib_diffad` (and the benchmark baselines of :mod:`diffad_tools.baselines`), so
that jsonargparse finds ``DiffAD`` among ``AnomalibModule`` subclasses before it parses. Programs that never run anomalib's CLI pay nothing; Python code imports
``anomalib_diffad`` itself. Set ``ANOMALIB_DIFFAD_AUTOLOAD=0`` to disable it.

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

        spec.loader.exec_module = exec_then_load_plugin  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register the finder once, unless disabled or anomalib's CLI is already imported."""
    if os.environ.get("ANOMALIB_DIFFAD_AUTOLOAD", "1") == "0" or TRIGGER in sys.modules:
        return
    if not any(isinstance(finder, _AfterAnomalibCli) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterAnomalibCli())


install()
