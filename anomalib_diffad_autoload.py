# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Start-up hook that makes ``anomalib ... --model DiffAD`` and ``--data MVTec`` resolve.

``anomalib_diffad.pth`` imports this tiny module at interpreter start. It imports nothing heavy: it only
adds a one-shot ``sys.meta_path`` finder for ``anomalib.cli.cli`` (the module behind the ``anomalib`` console
script, which imports ``anomalib.models`` and ``anomalib.data`` completely). Right before that module executes,
the finder ignores the deprecation warnings no user can act on; right after, it applies
:func:`diffad_tools.anomalib_cli.install` (which imports :mod:`anomalib_diffad`, so that jsonargparse finds
``DiffAD`` among ``AnomalibModule`` subclasses before it parses, and registers the plugin's names, fixes and
checks: see :mod:`diffad_tools.anomalib_cli`). Programs that never run anomalib's CLI pay nothing, and
``import anomalib_diffad`` changes nothing in anomalib. Set ``ANOMALIB_DIFFAD_AUTOLOAD=0`` to disable it.

Only ``os`` and ``sys`` (already loaded by the interpreter) are imported at start-up: the finder is duck-typed
rather than an ``importlib.abc.MetaPathFinder``, whose import alone pulls in ``pathlib``, ``re`` and
``tempfile``.
"""

import os
import sys

TRIGGER = "anomalib.cli.cli"


def _warn_not_loaded(error: Exception) -> None:
    import warnings  # noqa: PLC0415

    warnings.warn(f"anomalib-diffad could not be loaded: {error!r}", stacklevel=2)


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
            try:
                from diffad_tools import anomalib_cli  # noqa: PLC0415 - imports only the standard library
            except Exception as error:  # noqa: BLE001 - a broken plugin must never break anomalib itself
                exec_module(module)
                _warn_not_loaded(error)
                return
            anomalib_cli.ignore_foreign_deprecations()
            exec_module(module)
            try:
                anomalib_cli.install(module)
            except Exception as error:  # noqa: BLE001
                _warn_not_loaded(error)

        spec.loader.exec_module = exec_then_load_plugin  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register the finder once, unless disabled or anomalib's CLI is already imported."""
    if os.environ.get("ANOMALIB_DIFFAD_AUTOLOAD", "1") == "0" or TRIGGER in sys.modules:
        return
    if not any(isinstance(finder, _AfterAnomalibCli) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterAnomalibCli())


install()
