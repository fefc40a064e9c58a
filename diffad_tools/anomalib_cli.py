# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""What the ``anomalib`` command line gets from anomalib-diffad, applied by its start-up hook only.

``import anomalib_diffad`` changes nothing in anomalib. The start-up hook (``anomalib_diffad_autoload``, run
when ``anomalib.cli.cli`` is imported) calls :func:`ignore_foreign_deprecations` right before anomalib's CLI
module executes and :func:`install` right after it. Python code that runs anomalib's name-based pipelines
itself (``anomalib.pipelines.Benchmark``) calls :func:`install` first, or the parts it wants:

- :func:`register_names`: ``DiffAD``, ``BudgetDraem``, ``MVTec`` and ``MultiCategory`` become attributes of
  ``anomalib.models`` and ``anomalib.data``. anomalib's ``get_model`` resolves a config's short ``class_path``
  (``anomalib benchmark``'s model grid) with ``getattr(anomalib.models, name)``, and ``get_datamodule`` (the
  benchmark's data, ``MultiCategory``'s child configs) with ``getattr(anomalib.data, name)``. (``--model
  DiffAD`` itself, and ``get_model("diffad")``, are found among ``AnomalibModule``'s subclasses, which any import
  of ``DiffAD`` provides.)
- :func:`fix_benchmark_collect`: anomalib 2.7's ``BenchmarkJob.collect`` builds its table from the keys of the
  first job's result and raises ``KeyError`` on any other key, so a grid whose models have different
  ``init_args`` or test metrics (DiffAD's AUPRO) loses every result at the end of the run; the replacement
  builds the same table with the union of the keys (missing values empty).
- :func:`check_mvtec_folders`: ``MVTecAD.prepare_data`` stops a missing dataset folder before any download, and
  every MVTec AD category folder anomalib parses is checked first
  (:func:`~anomalib_diffad.data.checks.check_mvtec_root`, :func:`~anomalib_diffad.data.checks.check_mvtec_folder`).
- :func:`ignore_foreign_deprecations`: deprecation warnings that every ``anomalib`` run prints and no user can
  act on are ignored.
- With anomalib's CLI module: a :class:`~anomalib_diffad.data.checks.DataCheckError` (a problem with the user's
  data, whose message names the file or setting) is printed as one ``error:`` line, exit status 1, instead of a
  traceback through jsonargparse, anomalib and Lightning (``ANOMALIB_DIFFAD_TRACEBACK=1`` shows it); a DiffAD
  run whose ``trainer.precision`` is unset gets the precision the hardware runs fastest, and one that lists
  neither of the memory callbacks gets both (:func:`install_cli_defaults`).

Every step is idempotent. This module imports only the standard library until :func:`install` runs, so the hook
can call :func:`ignore_foreign_deprecations` before anomalib is imported.

Example:
    >>> from diffad_tools.anomalib_cli import collect_results
    >>> collect_results([{"model": "DiffAD", "pixel_AUPRO": 0.7}, {"model": "Padim"}]).shape
    (2, 2)
"""

import functools
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

FOREIGN_DEPRECATIONS = (
    "Importing from timm.models.layers is deprecated",
    "The anomalib.models.components.dinov2 package is deprecated",
    "`isinstance(treespec, LeafSpec)` is deprecated",
)
"""Starts of the ``FutureWarning`` messages every ``anomalib`` run prints: anomalib's own imports of
timm.models.layers and of its dinov2 package, and Lightning's use of torch's LeafSpec in its training loop."""


def ignore_foreign_deprecations() -> None:
    """Ignore the :data:`FOREIGN_DEPRECATIONS` (``FutureWarning`` with these exact message starts)."""
    for message in FOREIGN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)


def register_names() -> None:
    """Make ``DiffAD`` and ``BudgetDraem`` attributes of ``anomalib.models``, ``MultiCategory`` and ``MVTec`` (unless
    anomalib has one) of ``anomalib.data``, where anomalib's ``get_model`` and ``get_datamodule`` look names up."""
    import anomalib.data  # noqa: PLC0415
    import anomalib.models  # noqa: PLC0415

    from anomalib_diffad import DiffAD, MultiCategory, MVTec  # noqa: PLC0415
    from diffad_tools.baselines import BudgetDraem  # noqa: PLC0415

    anomalib.models.DiffAD = DiffAD
    anomalib.models.BudgetDraem = BudgetDraem  # ``class_path: BudgetDraem`` in configs/benchmark*.yaml
    anomalib.data.MultiCategory = MultiCategory
    if not hasattr(anomalib.data, "MVTec"):
        anomalib.data.MVTec = MVTec


def collect_results(results: list[dict[str, Any]]) -> "pd.DataFrame":  # noqa: F821 - pandas is imported late
    """One row per benchmark job, one column per key any job reported, first job's keys first."""
    import pandas as pd  # noqa: PLC0415

    return pd.DataFrame(results)


def fix_benchmark_collect() -> None:
    """Make ``BenchmarkJob.collect`` tolerate results with different keys (:func:`collect_results`)."""
    from anomalib.pipelines.benchmark.job import BenchmarkJob  # noqa: PLC0415

    BenchmarkJob.collect = staticmethod(collect_results)


def check_mvtec_folders() -> None:
    """Run ``check_mvtec_root`` before anomalib's ``MVTecAD`` downloads, and ``check_mvtec_folder`` whenever it
    parses a category folder.

    Wraps ``MVTecAD.prepare_data`` and ``anomalib.data.datasets.image.mvtecad.make_mvtec_ad_dataset``; present
    and valid folders behave as before, and a missing MVTec AD category still downloads where it can.
    """
    from anomalib.data.datamodules.image import mvtecad as datamodule  # noqa: PLC0415
    from anomalib.data.datasets.image import mvtecad  # noqa: PLC0415

    from anomalib_diffad.data.checks import check_mvtec_folder, check_mvtec_root  # noqa: PLC0415

    prepare = datamodule.MVTecAD.prepare_data
    if not getattr(prepare, "checks_root", False):

        @functools.wraps(prepare)
        def checked_prepare_data(self: datamodule.MVTecAD) -> None:
            check_mvtec_root(self.root, self.category, datamodule.DOWNLOAD_INFO.url, mvtecad.CATEGORIES)
            prepare(self)

        checked_prepare_data.checks_root = True
        datamodule.MVTecAD.prepare_data = checked_prepare_data

    parse = mvtecad.make_mvtec_ad_dataset
    if getattr(parse, "checks_folder", False):
        return

    @functools.wraps(parse)
    def make_checked_dataset(root: Path | str, split: object = None, extensions: Sequence[str] | None = None) -> object:
        split_name = getattr(split, "value", split)
        check_mvtec_folder(root, None if split_name is None else str(split_name), extensions or mvtecad.IMG_EXTENSIONS)
        return parse(root, split, extensions)

    make_checked_dataset.checks_folder = True
    mvtecad.make_mvtec_ad_dataset = make_checked_dataset


def print_data_errors(main: Callable[[], object]) -> Callable[[], object]:
    """Wrap a CLI ``main``: print a ``DataCheckError``'s message alone on stderr and exit with status 1."""
    if getattr(main, "prints_data_errors", False):
        return main

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

    main_printing_data_errors.prints_data_errors = True  # type: ignore[attr-defined]
    return main_printing_data_errors


MEMORY_CALLBACKS = ("diffad_tools.callbacks.ReleaseFreedMemory", "diffad_tools.callbacks.CapWorkers")
"""Callbacks a DiffAD run on the command line gets when it lists none of them: without them the bare command
(anomalib's 8 DataLoader workers, glibc's default allocator) peaked at 4.1 GiB instead of 2.0 GiB."""


def add_memory_callbacks(config: Any) -> bool:  # noqa: ANN401 - jsonargparse Namespace
    """Append :data:`MEMORY_CALLBACKS` to ``trainer.callbacks`` of one CLI subcommand's parsed ``config`` if it runs
    a DiffAD and lists none of them; return whether they were added."""
    from jsonargparse import Namespace  # noqa: PLC0415

    from anomalib_diffad.precision import DIFFAD_CLASS_PATHS  # noqa: PLC0415

    model, trainer = config.get("model"), config.get("trainer")
    class_path = model if isinstance(model, str) else getattr(model, "class_path", None)
    if trainer is None or class_path not in DIFFAD_CLASS_PATHS:
        return False
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    listed = {getattr(c, "class_path", type(c).__module__ + "." + type(c).__name__) for c in callbacks}
    if listed & set(MEMORY_CALLBACKS):
        return False
    completed = (Namespace(class_path=path, init_args=Namespace()) for path in MEMORY_CALLBACKS)
    trainer["callbacks"] = [*callbacks, *completed]
    return True


def install_cli_defaults(cli_class: type) -> None:
    """Make ``cli_class`` (anomalib's ``AnomalibCLI``) complete a DiffAD run's configuration before it instantiates
    classes: the precision from the hardware (:func:`~anomalib_diffad.precision.resolve_cli_precision`) and the
    :data:`MEMORY_CALLBACKS` (:func:`add_memory_callbacks`)."""
    before = cli_class.before_instantiate_classes
    if getattr(before, "completes_diffad_config", False):
        return

    def before_instantiate_classes(self: Any) -> None:  # noqa: ANN401
        from anomalib_diffad.precision import SUBCOMMANDS, resolve_cli_precision  # noqa: PLC0415

        subcommand = self.config.get("subcommand")
        if subcommand in SUBCOMMANDS:
            resolve_cli_precision(self.config[subcommand])
            add_memory_callbacks(self.config[subcommand])
        before(self)

    before_instantiate_classes.completes_diffad_config = True  # type: ignore[attr-defined]
    cli_class.before_instantiate_classes = before_instantiate_classes


def install(cli_module: ModuleType | None = None) -> None:
    """Apply all of the above; with ``cli_module`` (``anomalib.cli.cli``), also wrap its ``main`` and its
    ``AnomalibCLI``."""
    ignore_foreign_deprecations()
    register_names()
    fix_benchmark_collect()
    check_mvtec_folders()
    if cli_module is None:
        return
    main = getattr(cli_module, "main", None)
    if callable(main):
        cli_module.main = print_data_errors(main)
    cli_class = getattr(cli_module, "AnomalibCLI", None)
    if cli_class is not None:
        install_cli_defaults(cli_class)
